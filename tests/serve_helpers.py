"""Start and stop ``fastcnn-serve`` in a subprocess for the API and browser tests."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading

from helpers import subprocess_env

URL = re.compile(r"serving (http://\S+) ")


class Server:
    """A running ``fastcnn-serve MODEL --port 0 ARGS``: ``url`` once it listens; ``lines`` everything
    it printed (stdout and stderr)."""

    def __init__(self, model, *args, timeout=300):
        cmd = [sys.executable, "-c", "import sys; from fastcnn.serve.cli import serve_main; sys.exit(serve_main())",
               str(model), "--port", "0", *map(str, args)]
        self.proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.url = None
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or self.url is None:
            self.stop()
            raise AssertionError(f"fastcnn-serve did not start: {self.lines}")

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            m = URL.search(line)
            if m:
                self.url = m.group(1)
                self._ready.set()
        self._ready.set()

    def interrupt(self, timeout=60) -> int:
        """Ctrl-C (SIGINT); returns the exit status."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

