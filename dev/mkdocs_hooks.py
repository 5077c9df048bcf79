"""MkDocs hook: the docstrings use Sphinx roles (``:func:`name```), which Markdown renders as the
role's name before a code span. Drop the role and, as Sphinx does, a ``~`` prefix's module path."""
from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj|const):(<code>)")
_TILDE = re.compile(r"<code>~(?:[\w]+\.)+(\w+)</code>")


def on_page_content(html: str, **kwargs) -> str:
    return _TILDE.sub(r"<code>\1</code>", _ROLE.sub(r"\1", html))
