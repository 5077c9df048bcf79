"""The ``fastcnn-bench`` command: parse the arguments, run the benchmarks, print the report, write
results.json and the charts."""
from __future__ import annotations

import argparse
from pathlib import Path

from fastcnn._cli import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    HelpFormatter,
    Parser,
    UsageError,
    check_data_dir,
    positive_int,
    print_error,
    probe_writable,
    write_line,
)
from fastcnn._process import tune_process
from fastcnn.benchmarks.charts import plot_charts
from fastcnn.benchmarks.measurement import MATMUL_N
from fastcnn.benchmarks.report import format_report, write_json
from fastcnn.benchmarks.run import BACKEND_ORDER, Settings, run_benchmarks
from fastcnn.benchmarks.torch_compare import TorchUnavailable
from fastcnn.benchmarks.workload import TEST_IMAGES

PROG = "fastcnn-bench"
EPILOG = """\
exit status: 0 done; 1 a result disagreed with the NumPy reference, or another failure;
2 usage error, or --compare torch without an importable PyTorch; 130 interrupted.

Every fraction of peak is against the float32 FMA peak fastcnn-bench measures itself (Numba
multiply-add chains); numpy.matmul's rate is shown as a second yardstick.
A figure marked ! was measured while other programs used the cores it needed."""


def _backends(text: str) -> tuple:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in BACKEND_ORDER]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(BACKEND_ORDER)}, got {text!r}")
    return tuple(b for b in BACKEND_ORDER if b in names)


def build_parser() -> Parser:
    p = Parser(prog=PROG, formatter_class=HelpFormatter, epilog=EPILOG,
               description="Measure fastcnn against the machine: the float32 FMA peak and numpy.matmul, then\n"
                           "the NumPy reference and the Numba kernels per op (the MNIST network's shapes and a\n"
                           "general shape set), per training epoch and evaluation on real MNIST, and Numba thread\n"
                           "scaling. Prints tables; writes results.json and PNG charts.")
    p.add_argument("--out", type=Path, default=Path("bench-results"), metavar="DIR",
                   help="output folder for results.json and the charts")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="thread scaling of the Numba epoch over 1..N threads (default: all Numba threads)")
    p.add_argument("--quick", action="store_true",
                   help="fewer batches, rounds and test images (about 1 minute on a quiet 2-core machine; the first "
                        "run adds 20-40 s of compilation)")
    p.add_argument("--batches", type=positive_int, default=None, metavar="N",
                   help="timed training batches for the Numba backend and per thread count (default 60, quick 15); "
                        "the NumPy reference gets at most 20 (quick 5)")
    p.add_argument("--backends", type=_backends, default=BACKEND_ORDER, metavar="LIST",
                   help="comma-separated backends to time (default: numpy,numba); results are always checked "
                        "against the NumPy reference")
    p.add_argument("--compare", choices=("torch",), default=None,
                   help="also time PyTorch (if importable) on the same ops and training step, same threads and "
                        "dtype, alternating with fastcnn, checked against the reference; adds 'fastcnn / torch'")
    p.add_argument("--no-general", action="store_true",
                   help="skip the general shape set (LeNet-5 5x5, 3->64, 64->128, stride 2, 1x1, 7x7 stem)")
    p.add_argument("--eval-images", type=positive_int, default=None, metavar="N",
                   help=f"test images timed for evaluation (default {TEST_IMAGES}, quick 2000)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder with the MNIST IDX files (default: $FASTCNN_DATA_DIR, then the cache, then a download)")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.add_argument("--model", default=None, metavar="NAME|FILE",
                   help="time this model instead: a built-in name (mnist-cnn, lenet5, cifar-cnn), a JSON model "
                        "file or a checkpoint; its training step per backend (and PyTorch's with --compare torch) "
                        "and per layer, on real MNIST for 1x28x28 input, random data of its input shape otherwise "
                        "(no op tables, evaluation, thread scaling or charts)")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    import numba  # lazy: --help stays fast
    quick = args.quick
    max_threads = numba.config.NUMBA_NUM_THREADS
    threads = args.threads if args.threads is not None else max_threads
    if threads > max_threads:
        raise UsageError(f"set NUMBA_NUM_THREADS={threads} to allow more: --threads {threads} exceeds the "
                         f"{max_threads} threads Numba was started with")
    if args.compare == "torch" and "numba" not in args.backends:
        raise UsageError("--compare torch compares with the Numba kernels: keep numba in --backends")
    batches = args.batches or (15 if quick else 60)
    return Settings(
        out=args.out, backends=args.backends, threads=threads, quick=quick, batches=batches,
        reference_batches=min(batches, 5 if quick else 20), warmup_batches=2 if quick else 3,
        eval_images=args.eval_images or (2000 if quick else TEST_IMAGES), eval_repeats=2 if quick else 3,
        op_min_rounds=3 if quick else 10, op_min_time=0.1 if quick else 0.5,
        matmul_n=MATMUL_N, matmul_repeats=3 if quick else 5, matmul_min_time=0.5 if quick else 1.5,
        peak_min_time=0.2 if quick else 0.5, general=not args.no_general, compare=args.compare,
        data_dir=args.data_dir, charts=not args.no_charts)


def bench_main(argv: list[str] | None = None) -> int:
    """The ``fastcnn-bench`` command. Returns the exit status (see the epilog)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        settings = settings_from_args(args)
        check_data_dir(args.data_dir)
        probe_writable(settings.out, "--out", create=False)         # before minutes of timing, not after
    except UsageError as exc:
        print_error(PROG, f"{exc} (see {PROG} --help)")
        return EXIT_USAGE
    except SystemExit as exc:                               # --help
        return int(exc.code or 0)
    except ValueError as exc:
        print_error(PROG, str(exc))
        return EXIT_ERROR
    if args.model is not None:
        return _model_main(args.model, settings)

    def work() -> int:
        settings.out.mkdir(parents=True, exist_ok=True)
        tune_process()                                      # as fastcnn-train does: the figures are its speed
        results = run_benchmarks(settings)
        write_line(format_report(results))
        written = [write_json(results, settings.out / "results.json")]
        if settings.charts:
            written += plot_charts(results, settings.out)
        write_line("wrote " + ", ".join(str(p) for p in written))
        return EXIT_OK
    return _reported(work)


def _reported(work, usage_prefix: str | None = None) -> int:
    """``work()``'s exit status, its failures turned into one line and a status. With
    ``usage_prefix``, a ValueError is a usage error (exit 2) named by that prefix."""
    try:
        return work()
    except TorchUnavailable as exc:
        print_error(PROG, str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        print_error(PROG, "interrupted")
        return EXIT_INTERRUPTED
    except AssertionError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else "a result disagrees with the reference"
        print_error(PROG, f"check against the NumPy reference failed: {msg}")
        return EXIT_ERROR
    except ValueError as exc:
        if usage_prefix is None:
            print_error(PROG, str(exc) or type(exc).__name__)
            return EXIT_ERROR
        print_error(PROG, f"{usage_prefix}: {exc}")           # a model that cannot be timed (no classes, no shape)
        return EXIT_USAGE
    except Exception as exc:                                # noqa: BLE001 - one line, no traceback
        print_error(PROG, str(exc) or type(exc).__name__)
        return EXIT_ERROR


def _model_main(model_arg: str, settings: Settings) -> int:
    """``fastcnn-bench --model``: one model's training step and per-layer profile."""
    from fastcnn.benchmarks.model_bench import format_model_report, run_model_benchmark
    from fastcnn.benchmarks.run import _log
    from fastcnn.modelio import open_model
    try:
        name, model = open_model(model_arg)
    except (OSError, ValueError) as exc:
        print_error(PROG, f"--model {model_arg}: {exc}")
        return EXIT_USAGE

    def work() -> int:
        settings.out.mkdir(parents=True, exist_ok=True)
        tune_process()
        results = run_model_benchmark(settings, name, model, _log)
        write_line(format_model_report(results))
        write_line(f"wrote {write_json(results, settings.out / 'results.json')}")
        return EXIT_OK
    return _reported(work, usage_prefix=f"--model {model_arg}")
