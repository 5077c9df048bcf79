"""The runs of a sweep: comma-separated option lists (their product) or a TOML/JSON file of runs.

Every training option of ``fastcnn-train`` that changes what is computed can be a list
(``--optimizer sgd,adamw --lr 0.01,0.002 --batchnorm off,on --seed 0,1,2``); the sweep is the
product of the lists, in the order the options are listed in :data:`OPTIONS`. A runs file holds
``defaults`` (applied to every run) and ``runs`` (one table per run, or per sub-grid: a list value
expands as a product inside that entry); options given on the command line fill in whatever an
entry leaves out. Runs are named after the settings that differ between them (``sgd_lr0.01_seed1``)
unless a file entry gives a ``name``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastcnn._cli import UsageError, float_in, int_at_least
from fastcnn._files import InputFileError, read_input
from fastcnn.augment import AUGMENTATIONS
from fastcnn.backend import BACKENDS
from fastcnn.data import DATASETS as KNOWN_DATASETS
from fastcnn.train import DEFAULT_MOMENTUM, DTYPES, OPTIMIZERS, SCHEDULES, TrainConfig

__all__ = [
    "DATASETS",
    "DEFAULT_EPOCHS",
    "DEFAULT_OPTIMIZERS",
    "MAX_EPOCHS",
    "MAX_RUNS",
    "OPTIONS",
    "Option",
    "RunSpec",
    "build_runs",
    "expand",
    "load_runs_file",
    "parse_list",
]

#: A sweep with no options compares the two optimizers over a few epochs.
DEFAULT_EPOCHS = 3
DEFAULT_OPTIMIZERS = ("sgd", "adamw")
#: The most runs one sweep holds (its grid is refused before it is built), the most epochs per run,
#: and the largest runs file read.
MAX_RUNS = 10_000
MAX_EPOCHS = 100_000
MAX_RUNS_FILE_BYTES = 1 << 20
DATASETS = (*KNOWN_DATASETS, "custom")


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text):
        if text not in options:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(options)}, got {text!r}")
        return text
    return parse


def _on_off(text: str) -> bool:
    low = text.lower()
    if low in ("on", "true", "yes", "1"):
        return True
    if low in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


@dataclass(frozen=True)
class Option:
    """One list-valued training option: its :class:`TrainConfig` field, how one item is parsed, help."""
    field: str
    parse: Callable[[str], object]
    help: str
    example: str

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


_D = TrainConfig                    # its class attributes are fastcnn-train's defaults


def _val_split(text: str) -> int | float:
    from fastcnn.validation import parse_val_split
    try:
        return parse_val_split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _augment(text: str) -> str | None:
    """An augmentation, or ``none`` (no augmentation: one list compares with and without)."""
    if text.lower() in ("none", "off"):
        return None
    return _choice(tuple(AUGMENTATIONS))(text)


def _model(text: str) -> str:
    """A built-in model name, or a model file (as an absolute path, which every worker reads)."""
    from fastcnn.modelio import ModelFileError, read_model_file
    from fastcnn.zoo import MODELS
    if text in MODELS:
        return text
    try:
        read_model_file(text)
    except (ModelFileError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return str(Path(text).resolve())


#: The training options a sweep can vary, in the order run names list them.
OPTIONS = (
    Option("model", _model, f"networks: built-in names or model files (default: {_D.model})", "mnist-cnn,lenet5"),
    Option("optimizer", _choice(OPTIMIZERS),
           f"optimizers ({', '.join(OPTIMIZERS)}; default: {','.join(DEFAULT_OPTIMIZERS)})", "sgd,adamw"),
    Option("lr", float_in(0.0, lo_open=True), "peak learning rates (default: per optimizer, as fastcnn-train)",
           "0.01,0.002"),
    Option("lr_schedule", _choice(SCHEDULES),
           f"learning-rate schedules ({', '.join(SCHEDULES)}; default: {_D.lr_schedule})", "cosine,constant"),
    Option("momentum", float_in(0.0, 1.0),
           f"SGD momentum values, used by the sgd runs only (default: {DEFAULT_MOMENTUM})", "0.9,0.99"),
    Option("weight_decay", float_in(0.0), "weight decays (default: per optimizer, as fastcnn-train)", "0,0.01"),
    Option("dropout", float_in(0.0, 1.0), f"dropout probabilities, 0 <= P < 1 (default: {_D.dropout})", "0,0.5"),
    Option("batchnorm", _on_off, f"batch normalisation after each convolution: off, on "
           f"(default: {'on' if _D.batchnorm else 'off'})", "off,on"),
    Option("batch_size", int_at_least(1), f"training batch sizes (default: {_D.batch_size})", "64,128"),
    Option("epochs", int_at_least(1, MAX_EPOCHS), f"epochs per run (default: {DEFAULT_EPOCHS})", "3,5"),
    Option("val_split", _val_split, "hold out a seeded, class-balanced validation split of the training set: N images "
           "or a fraction in (0, 1); runs are then ranked by validation accuracy and the test set is scored once, "
           "after training (default: none)", "0.1"),
    Option("early_stop", int_at_least(1), "with --val-split: stop after K epochs without a lower validation loss "
           "and keep the best epoch's model (default: off)", "3"),
    Option("augment", _augment, f"training-batch augmentations ({', '.join(AUGMENTATIONS)}, none; default: none)",
           "none,shift"),
    Option("dtype", _choice(DTYPES), f"floating-point types ({', '.join(DTYPES)}; default: {_D.dtype})",
           "float32,float64"),
    Option("backend", _choice(BACKENDS), f"conv/pool implementations ({', '.join(BACKENDS)}; default: "
           "$FASTCNN_BACKEND, else numba)", "numba,numpy"),
    Option("seed", int_at_least(0), f"seeds of the weights, dropout and shuffling (default: {_D.seed}); runs that "
           "differ only in the seed are drawn as one mean line with a band", "0,1,2"),
    Option("limit_train", int_at_least(1), "use only the first N training images (default: all)", "1000"),
    Option("limit_test", int_at_least(1), "use only the first N test images (default: all)", "1000"),
)
_BY_FIELD = {o.field: o for o in OPTIONS}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its folder name, its group (the name without the seed: seeds of one
    configuration are averaged in the plots), its resolved :class:`TrainConfig` and the values that
    were given for it (``given``: field -> value, for the summary)."""
    name: str
    group: str
    config: TrainConfig
    given: dict


def parse_list(option: Option, text: str) -> list:
    """The items of a comma-separated list for ``option`` (raises UsageError, fix first)."""
    items = [t.strip() for t in str(text).split(",")]
    if not items or any(not t for t in items):
        raise UsageError(f"{option.flag} {text!r}: give a comma-separated list without empty items, "
                         f"e.g. {option.flag} {option.example}")
    values = []
    for item in items:
        try:
            value = option.parse(item)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"{option.flag} {text!r}: {exc} (e.g. {option.flag} {option.example})") from None
        if value in values:
            raise UsageError(f"{option.flag} {text!r}: {item!r} is listed twice; list each value once")
        values.append(value)
    return values


def _file_value(option: Option, value, where: str) -> list:
    """A runs-file value (a scalar or a list of scalars) as a list of parsed items."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise UsageError(f"{where}: {option.field} is an empty list; give at least one value")
    text = []
    for item in items:
        if isinstance(item, bool):
            item = "on" if item else "off"
        elif not isinstance(item, (str, int, float)):
            raise UsageError(f"{where}: {option.field} = {item!r}: expected a number, a string or a list of them")
        text.append(str(item))
    try:
        return parse_list(option, ",".join(text))
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None


def _why(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "it is nested too deeply (a runs file needs two levels)"
    text = " ".join(str(exc).split())
    if "integer string conversion" in text:
        return "a number has thousands of digits; give a usable value"
    return text[:200]


def _read_document(path: Path) -> object:
    suffix = path.suffix.lower()
    try:
        raw = read_input(path, MAX_RUNS_FILE_BYTES)
    except InputFileError as exc:
        raise UsageError(f"--runs {str(path)!r}: {exc}") from None
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:      # Python 3.10
            raise UsageError(f"--runs {str(path)!r}: reading TOML needs Python >= 3.11 (tomllib); "
                             "write the runs as a .json file") from None
        try:
            return tomllib.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:      # ValueError: TOML, UTF-8, a 5000-digit integer
            raise UsageError(f"--runs {str(path)!r}: fix the TOML: {_why(exc)}") from None
    if suffix == ".json":
        try:
            return json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:      # ValueError: JSON, UTF-8, a 5000-digit integer
            raise UsageError(f"--runs {str(path)!r}: fix the JSON: {_why(exc)}") from None
    raise UsageError(f"--runs {str(path)!r}: name a .toml or .json file")


def _entry(table: object, where: str) -> dict:
    """A runs-file table as {field: [values]} plus an optional 'name'."""
    if not isinstance(table, dict):
        raise UsageError(f"{where}: expected a table of options, got {type(table).__name__}")
    out = {}
    for key, value in table.items():
        field = str(key).replace("-", "_")
        if field == "name":
            if not isinstance(value, str) or not _NAME_RE.match(value):
                raise UsageError(f"{where}: name {value!r}: use letters, digits and . _ = + - only")
            out["name"] = value
            continue
        if field not in _BY_FIELD:
            raise UsageError(f"{where}: unknown option {key!r}; expected name or one of "
                             f"{', '.join(o.field for o in OPTIONS)}")
        out[field] = _file_value(_BY_FIELD[field], value, where)
    return out


def load_runs_file(path: str | Path) -> list[dict]:
    """The entries of a runs file (.toml or .json) as ``{field: [values], "name"?: str}`` dicts,
    ``defaults`` merged into each. JSON may also be a bare list of entries."""
    path = Path(path)
    doc = _read_document(path)
    where = f"--runs {str(path)!r}"
    if isinstance(doc, list):
        doc = {"runs": doc}
    if not isinstance(doc, dict) or set(doc) - {"defaults", "runs"}:
        extra = sorted(set(doc) - {"defaults", "runs"}) if isinstance(doc, dict) else []
        raise UsageError(f"{where}: expected a 'runs' list of tables and optional 'defaults'"
                         + (f", not {', '.join(map(repr, extra))}" if extra else ""))
    defaults = _entry(doc.get("defaults", {}), f"{where}: defaults")
    defaults.pop("name", None)
    runs = doc.get("runs")
    if not isinstance(runs, list) or not runs:
        raise UsageError(f"{where}: list at least one run under 'runs' ([[runs]] in TOML)")
    return [{**defaults, **_entry(t, f"{where}: runs[{i}]")} for i, t in enumerate(runs)]


def _too_many(count: int) -> UsageError:
    return UsageError(f"the sweep would have {count:,} runs, more than the {MAX_RUNS:,} one sweep runs: "
                      "split it into several sweeps or list fewer values")


def expand(lists: dict) -> list[dict]:
    """The product of ``{field: [values]}`` in :data:`OPTIONS` order, as one dict per run; a
    :class:`UsageError` before anything is built when that is more than :data:`MAX_RUNS`."""
    fields = [o.field for o in OPTIONS if o.field in lists]
    count = math.prod(len(lists[f]) for f in fields)
    if count > MAX_RUNS:
        raise _too_many(count)
    return [dict(zip(fields, combo)) for combo in itertools.product(*(lists[f] for f in fields))]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _part(field: str, value) -> str:
    if field == "batchnorm":
        return "bn" if value else "nobn"
    if field in ("optimizer", "lr_schedule", "dtype", "backend"):
        return str(value)
    if field == "augment":
        return "noaug" if value is None else str(value)
    if field == "early_stop" and value is None:
        return "no-early-stop"
    if field == "model":
        return Path(value).stem if value.endswith((".json", ".npz")) else value
    if value is None:
        return f"{field.replace('_', '-')}-default"
    return f"{field.replace('_', '-')}{_fmt(value)}"


_DEFAULTS = TrainConfig()


def _names(given: list[dict], keys: list[str]) -> list[str]:
    """Names from the given values; a value not given is TrainConfig's default (None, "-default", for
    the settings whose default depends on the optimizer)."""
    return ["_".join(_part(k, g[k] if k in g else getattr(_DEFAULTS, k)) for k in keys) for g in given]


def build_runs(cli_lists: dict, entries: list[dict] | None = None) -> list[RunSpec]:
    """The sweep's runs from the command line's ``{field: [values]}`` and, when a runs file was
    given, its ``entries`` (each filled in from ``cli_lists``). Every configuration is validated by
    :meth:`TrainConfig.resolved`; identical runs are listed once. Raises UsageError."""
    lists = dict(cli_lists)
    lists.setdefault("epochs", [DEFAULT_EPOCHS])
    named: list[tuple[str | None, str | None, dict]] = []       # (name, group, given)
    if entries is None:
        lists.setdefault("optimizer", list(DEFAULT_OPTIMIZERS))
        named = [(None, None, g) for g in expand(lists)]
    else:
        for entry in entries:
            entry = dict(entry)
            name = entry.pop("name", None)
            combos = expand({**lists, **entry})
            if len(named) + len(combos) > MAX_RUNS:
                raise _too_many(len(named) + len(combos))
            if name is None or len(combos) == 1:
                named.extend((name, name, g) for g in combos)
                continue
            keys = [o.field for o in OPTIONS if len(entry.get(o.field, lists.get(o.field, ()))) > 1]
            no_seed = [k for k in keys if k != "seed"]
            named.extend((f"{name}_{n}", f"{name}_{grp}" if no_seed else name, g)
                         for n, grp, g in zip(_names(combos, keys), _names(combos, no_seed), combos))

    if "momentum" in lists and entries is None and "sgd" not in lists["optimizer"]:
        raise UsageError("--momentum applies only to sgd runs: add sgd to --optimizer or leave --momentum out")
    if "early_stop" in lists and "val_split" not in lists and entries is None:
        raise UsageError("--early-stop needs --val-split (it watches the validation loss): add e.g. --val-split 0.1 "
                         "or leave --early-stop out")
    runs, seen = [], set()
    for name, group, given in named:
        given = dict(given)
        if given.get("optimizer", "adamw") != "sgd":
            given.pop("momentum", None)            # momentum is an SGD setting: not part of other runs
        try:
            config = TrainConfig(**given, quiet=True).resolved()
        except ValueError as exc:
            what = ", ".join(f"{k}={_fmt(v)}" for k, v in given.items())
            raise UsageError(f"invalid run ({what}): {exc}") from None
        key = json.dumps(config.to_dict(), sort_keys=True)
        if key not in seen:
            seen.add(key)
            runs.append((name, group, given, config))

    givens = [r[2] for r in runs]
    varying = [o.field for o in OPTIONS if len({json.dumps(g.get(o.field)) for g in givens}) > 1]
    no_seed = [f for f in varying if f != "seed"]
    auto_names = _names(givens, varying) if varying else [r[3].optimizer for r in runs]
    auto_groups = _names(givens, no_seed) if no_seed else [r[3].optimizer for r in runs]
    specs, names = [], set()
    for (name, group, given, config), auto_name, auto_group in zip(runs, auto_names, auto_groups):
        name = re.sub(r"[^A-Za-z0-9._=+-]", "-", name or auto_name)
        if name in names:
            raise UsageError(f"two runs are both named {name!r}: give each runs-file entry its own 'name'")
        names.add(name)
        specs.append(RunSpec(name=name, group=group or auto_group, config=config, given=given))
    return specs
