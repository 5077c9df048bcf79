"""The configuration of a ``fastcnn-train`` run from its parsed arguments: :func:`make_config`, or
with ``--resume`` the checkpoint's settings with every option given on the command line on top
(:func:`_load_resume`); a library :class:`~fastcnn.trainconfig.ConfigError` becomes a
:class:`~fastcnn._cli.UsageError` naming the option.
"""
from __future__ import annotations

from pathlib import Path

from fastcnn._cli import UsageError
from fastcnn._train_parser import build_parser

__all__ = ["make_config"]


def _usage_from(exc, resume=None) -> UsageError:
    """A UsageError for a :class:`~fastcnn.train.ConfigError`, naming the option instead of the field."""
    from fastcnn.train import ConfigError
    text = str(exc)
    if isinstance(exc, ConfigError) and text.startswith(exc.field):
        text = "--" + exc.field.replace("_", "-") + text[len(exc.field):]
    return UsageError(f"--resume {resume}: {text}" if resume else text)


_CONFIG_OPTIONS = {"divergence_factor": "diverge_factor", "divergence_window": "diverge_window"}


def make_config(args):
    """The resolved :class:`~fastcnn.train.TrainConfig` of parsed ``args`` (its ValueError: UsageError)."""
    from fastcnn.train import TrainConfig
    cfg = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                      lr=args.lr, lr_schedule=args.lr_schedule, momentum=args.momentum, weight_decay=args.weight_decay,
                      dropout=args.dropout, batchnorm=args.batchnorm, seed=args.seed, dtype=args.dtype,
                      backend=args.backend, threads=args.threads, limit_train=args.limit_train,
                      limit_test=args.limit_test, quiet=args.quiet, divergence_factor=args.diverge_factor,
                      divergence_window=args.diverge_window, val_split=args.val_split, early_stop=args.early_stop,
                      augment=args.augment, test_each_epoch=args.test_each_epoch)
    try:
        return cfg.resolved()
    except ValueError as exc:
        raise _usage_from(exc) from None


def _explicit_options(argv, args):
    """The ``dest`` names of the options given on the command line (not left at their default)."""
    unset = object()
    probe = build_parser()
    probe.set_defaults(**{dest: unset for dest in vars(args)})
    return {dest for dest, value in vars(probe.parse_args(argv)).items() if value is not unset}


def _resume_config(args, explicit, ckpt):
    """The configuration of a resumed run: the checkpoint's settings, with every option given on
    the command line on top; :func:`fastcnn.resume.check_resume` decides (UsageError when an
    explicit option contradicts the checkpoint or no epoch is left to train)."""
    from fastcnn.checkpoint import CheckpointError
    from fastcnn.train import RESUME_KEYS, ResumeRefused, TrainConfig, check_resume
    saved = ckpt.config
    settings = {k: saved[k] for k in RESUME_KEYS if k in saved}
    carried = ("epochs", "backend", "threads", "divergence_factor", "divergence_window", "early_stop",
               "test_each_epoch")
    for key in carried:
        if key in saved:
            settings[key] = saved[key]
    for key in (*RESUME_KEYS, *carried):
        option = _CONFIG_OPTIONS.get(key, key)
        if option in explicit:
            settings[key] = getattr(args, option)
    try:
        cfg = TrainConfig(**settings, quiet=args.quiet).resolved()
        check_resume(ckpt, cfg, dataset=args.dataset if "dataset" in explicit else None)
    except ResumeRefused as exc:
        if exc.diffs:
            conflicts = ", ".join(f"--{k.replace('_', '-')} {mine} (checkpoint: {theirs})"
                                  for k, mine, theirs in exc.diffs)
            raise UsageError(f"leave these options out: --resume continues with the checkpoint's settings, but "
                             f"{conflicts}") from None
        if exc.epochs_done is not None:
            raise UsageError(f"pass --epochs N (N > {exc.epochs_done}) to train further: --resume {args.resume} "
                             f"has completed {exc.epochs_done} of {cfg.epochs} epochs") from None
        raise
    except CheckpointError:
        raise
    except ValueError as exc:
        raise _usage_from(exc, args.resume) from None
    return cfg


def _load_resume(args, argv, console):
    from fastcnn.checkpoint import load_checkpoint
    ckpt = load_checkpoint(args.resume)             # CheckpointError: exit 1, one line
    config = _resume_config(args, _explicit_options(argv, args), ckpt)
    extra = ckpt.header.get("extra")
    extra = extra if isinstance(extra, dict) else {}
    if isinstance(extra.get("dataset"), str):
        args.dataset = extra["dataset"]
    source = extra.get("source_dir")
    if args.data_dir is None and isinstance(source, str) and Path(source).exists():
        args.data_dir = source
    if args.image_size is None and isinstance(extra.get("image_size"), list):
        args.image_size = tuple(extra["image_size"])
    args.skip_bad = args.skip_bad or extra.get("skip_bad") is True
    return ckpt, config


def _reading(args) -> dict:
    """How an image folder was read (``--image-size``, ``--skip-bad``), for the checkpoint, so
    ``--resume`` and ``fastcnn-eval`` read it the same way."""
    if args.dataset != "folder":
        return {}
    return {"image_size": list(args.image_size) if args.image_size else None, "skip_bad": bool(args.skip_bad)}
