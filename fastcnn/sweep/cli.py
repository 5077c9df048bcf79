"""``fastcnn-sweep``: run a grid of ``fastcnn-train`` configurations on Dask and compare them.

Exit codes: 0 every run completed, 1 a run failed or diverged (the others went on; the summary
says why) or the sweep could not run (data, cluster, files), 2 invalid arguments, 128 + the signal's
number when a signal stopped it (130 SIGINT, 143 SIGTERM, 129 SIGHUP, 131 SIGQUIT), after writing the
summary. Every error is one line on stderr, never a traceback.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from dataclasses import replace
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
    int_at_least,
    one_line,
    print_error,
    probe_writable,
    versions,
    write_line,
)
from fastcnn._files import PNG_SIGNATURE, FolderBusy, FolderLock, OutputRefused, check_output_file
from fastcnn.sweep.execute import Cluster, Signals, available_cores, run_all, scheduler_endpoint
from fastcnn.sweep.grid import DATASETS, DEFAULT_EPOCHS, OPTIONS, build_runs, load_runs_file, parse_list
from fastcnn.sweep.report import (
    CSV_COLUMNS,
    PLOT_FILES,
    rank,
    rank_key,
    record,
    save_comparison_plots,
    write_summary,
)
from fastcnn.sweep.worker import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    data_fingerprints,
    read_metrics,
    same_settings,
    settings_diff,
)
from fastcnn.train import RESUME_KEYS

PROG = "fastcnn-sweep"
#: Names a run may not have: the files the sweep itself writes into --out.
_RESERVED = frozenset({"summary.csv", "summary.json", *PLOT_FILES.values()})

_EPILOG = f"""\
examples:
  fastcnn-sweep                                   # SGD with momentum vs AdamW, {DEFAULT_EPOCHS} epochs, into sweep/
  fastcnn-sweep --optimizer sgd,adamw --lr 0.01,0.002 --seed 0,1,2 --out lr-grid
  fastcnn-sweep --batchnorm off,on --dropout 0,0.5 --epochs 2 --limit-train 10000
  fastcnn-sweep --model mnist-cnn,lenet5 --epochs 1 # compare networks (built-in names or model files)
  fastcnn-sweep --lr 0.001,0.002 --val-split 0.1 --early-stop 2 --augment none,shift --epochs 10
  fastcnn-sweep --runs runs.toml                  # runs listed in a file (TOML or JSON)
  fastcnn-sweep --scheduler tcp://10.0.0.5:8786   # on an existing Dask cluster

grid: every training option takes a comma-separated list; the sweep runs their product. --momentum
goes to the sgd runs only. Runs are named after the settings that differ (sgd_lr0.01_seed1).
ranking: by final test accuracy; with --val-split, by validation accuracy (of the model each run kept,
the best epoch's with --early-stop), the test set then scored once per run, after training.
runs file: [defaults] then one [[runs]] table per run (JSON: {{"defaults": {{...}}, "runs": [...]}}),
keys as the options (lr, batch_size or batch-size, ...) plus an optional name; a list value expands
as a grid inside that entry; options on the command line fill in what an entry leaves out.
output: OUT/<run>/metrics.json and checkpoint.npz for each run; OUT/summary.csv, OUT/summary.json
and the plots {', '.join(PLOT_FILES.values())}.
rerun: the same command in the same --out skips completed runs (same settings, intact checkpoint,
same data) and resumes the others from their checkpoints; one sweep at a time writes an --out.
stopping: Ctrl-C (or SIGTERM, SIGHUP, SIGQUIT) stops every run before its next batch and writes the
summary; a second signal stops at once.
exit codes: 0 all runs completed, 1 a run failed or diverged or the sweep could not run,
2 bad arguments (or another sweep is writing --out), 128 + the signal when one stopped it: 130 SIGINT,
143 SIGTERM, 129 SIGHUP, 131 SIGQUIT.
"""


def build_parser() -> Parser:
    p = Parser(prog=PROG, formatter_class=HelpFormatter, epilog=_EPILOG,
               description="Train several fastcnn configurations (networks, optimizers, ...) side by side on a Dask\n"
                           "cluster (a local one by default) and compare them: summary table and plots.")
    g = p.add_argument_group("runs (every option: one value or a comma-separated list)")
    for o in OPTIONS:
        g.add_argument(o.flag, metavar="LIST", default=None, help=o.help)
    g.add_argument("--runs", metavar="FILE", default=None, help="a .toml or .json file listing the runs")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="mnist", help="which dataset, for every run")
    g.add_argument("--data-dir", metavar="DIR", default=None,
                   help="folder with the four IDX files, as seen by the workers (default: $FASTCNN_DATA_DIR, "
                        "else ~/.cache/fastcnn/<dataset>)")
    g.add_argument("--no-download", action="store_true", help="never download; a run fails if the files are missing")

    g = p.add_argument_group("execution")
    g.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="run on the existing Dask cluster whose scheduler is at ADDRESS (tcp://HOST:PORT); its "
                        "workers need fastcnn, the data, and --out on a shared path to resume (default: a local "
                        "cluster)")
    g.add_argument("--workers", metavar="N", type=int_at_least(1), default=None,
                   help="local cluster: worker processes, i.e. runs at a time (default: one per run, at most one "
                        "per core)")
    g.add_argument("--threads-per-run", metavar="T", type=int_at_least(1), default=None,
                   help="kernel threads of each run (Numba, BLAS) (default: cores / workers; with --scheduler: "
                        "each worker's cores / its threads)")
    g.add_argument("--dashboard", metavar="HOST:PORT", default="127.0.0.1:8787",
                   help="local cluster: address of Dask's dashboard (port 0: any free port; shown when bokeh is "
                        "installed)")

    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", default="sweep", help="folder of the runs, summary and plots")
    g.add_argument("--no-timings", action="store_true",
                   help="leave wall-clock times out of each run's metrics.json (as fastcnn-train --no-timings)")
    g.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def _specs(args):
    lists = {o.field: parse_list(o, getattr(args, o.field)) for o in OPTIONS if getattr(args, o.field) is not None}
    entries = load_runs_file(args.runs) if args.runs is not None else None
    return build_runs(lists, entries)


def _fetch_data(dataset: str, data_dir: str | None, download: bool) -> None:
    """Make sure the local workers find the data: download it once here (not in every worker at the
    same time) when no folder holds it; a DataError names what is missing before any cluster starts."""
    from fastcnn.data import find_data_dir, load_dataset
    if find_data_dir(dataset, data_dir) is None:
        # Its DataError already leads with the fix (and says whether the download was disabled or failed).
        load_dataset(dataset, data_dir=data_dir, download=download)


def _short(text, limit: int = 160) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _line(rec: dict, done: int, total: int) -> str:
    status = rec["status"]
    if rec.get("skipped"):
        status = "completed earlier"
    elif rec.get("resumed_from"):
        status += f" (resumed after epoch {rec['resumed_from']})"
    text = f"[{done}/{total}] {rec['run']}: {status}"
    if rec["epochs_done"] and rec.get("ranked_by") == "val_acc":
        text += (f"  val acc {_pct(rec['val_acc'])} (best {_pct(rec['best_val_acc'])} @ epoch {rec['best_epoch']})"
                 f"  test {_pct(rec['final_test_acc'])} (scored once, at the end)  {rec['epochs_done']} "
                 f"epoch{'s' if rec['epochs_done'] != 1 else ''}")
    elif rec["epochs_done"]:
        text += (f"  test {_pct(rec['final_test_acc'])} (best {_pct(rec['best_test_acc'])} @ epoch "
                 f"{rec['best_epoch']})  {rec['epochs_done']} epoch{'s' if rec['epochs_done'] != 1 else ''}")
        if rec["mean_epoch_seconds"] is not None:
            text += f"  {rec['mean_epoch_seconds']:.1f} s/epoch"
    if rec["status"] != "completed" and rec.get("reason"):
        text += f"  ({_short(rec['reason'])})"
    return text


def _table(records: list[dict]) -> str:
    """The runs, best first (see :func:`fastcnn.sweep.report.rank`), with what ranks them."""
    ranked = rank(records)
    width = max(len("run"), *(len(r["run"]) for r in records))
    by_val = rank_key(records) == "val_acc"
    if by_val:
        head = f"{'val acc':>7}  {'test acc':>8}"
        cells = [f"{_pct(r['val_acc']):>7}  {_pct(r['final_test_acc']):>8}" for r in ranked]
    else:
        head = f"{'final':>7}  {'best':>7}"
        cells = [f"{_pct(r['final_test_acc']):>7}  {_pct(r['best_test_acc']):>7}" for r in ranked]
    rows = [f"{'rank':>4}  {'run':<{width}}  {'status':<11}  {head}  {'s/epoch':>7}"]
    for r, cell in zip(ranked, cells):
        sec = "-" if r["mean_epoch_seconds"] is None else f"{r['mean_epoch_seconds']:.1f}"
        place = "-" if r["rank"] is None else str(r["rank"])
        rows.append(f"{place:>4}  {r['run']:<{width}}  {r['status']:<11}  {cell}  {sec:>7}")
    if by_val:
        rows.append("ranked by val acc (the validation split, of the model each run kept); test acc: scored once, "
                    "after training, never used to rank")
    else:
        rows.append("ranked by final test accuracy")
    return "\n".join(rows)


def _require_dask() -> None:
    """Dask distributed is the ``sweep`` extra, not a dependency of fastcnn: without it, one line that
    names the install command (before any data is loaded or file touched)."""
    import importlib.util
    for module in ("dask", "distributed"):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise UsageError(f"install the sweep extra: pip install 'fastcnn[sweep]' ({PROG} runs its runs on "
                             f"Dask distributed, and {module!r} cannot be imported)")


LOCK_FILE = ".fastcnn-sweep.lock"


def _check_execution(args, runs: int) -> None:
    """--workers, --threads-per-run and --dashboard against what this machine can run, before any
    cluster starts (UsageError, the bound in the message)."""
    if args.scheduler is not None:
        scheduler_endpoint(args.scheduler)
        return
    cores = available_cores()
    if args.workers is not None and args.workers > cores:
        raise UsageError(f"--workers {args.workers}: this machine runs at most {cores} runs at a time (one worker "
                         f"process per core); give --workers {cores} or fewer")
    if args.workers is not None and args.workers > runs:
        args.workers = runs                     # a worker without a run would only cost a process
    workers = args.workers or max(1, min(runs, cores))
    if args.threads_per_run is not None and args.threads_per_run * workers > cores:
        raise UsageError(f"--threads-per-run {args.threads_per_run}: {workers} worker{'s' if workers != 1 else ''} x "
                         f"{args.threads_per_run} threads is more than the {cores} cores of this machine; give at "
                         f"most {max(1, cores // workers)}")
    host, colon, port = args.dashboard.rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--dashboard {args.dashboard!r}: give HOST:PORT, e.g. 127.0.0.1:8787 (port 0: any free port)")


def _check_earlier(specs, earlier: dict, out: Path, dataset: str) -> None:
    """A rerun may resume or skip its own runs, never replace others (UsageError)."""
    for spec in specs:
        doc = earlier[spec.name]
        if doc is None:
            continue
        diff = settings_diff(doc, spec.config, dataset, RESUME_KEYS)
        if diff:
            key, mine, theirs = diff[0]
            raise UsageError(f"choose another --out, or delete {out / spec.name}: it holds a run {spec.name} of "
                             f"other settings ({key} {theirs!r} there, {mine!r} now)")
        planned = (doc.get("config") or {}).get("epochs")
        if planned != spec.config.epochs and spec.config.lr_schedule != "constant":
            raise UsageError(f"choose another --out, delete {out / spec.name}, or keep --epochs {planned}: its run "
                             f"{spec.name} followed a {spec.config.lr_schedule} learning-rate schedule planned for "
                             f"{planned} epochs, so continuing it to {spec.config.epochs} would not give what a "
                             f"fresh {spec.config.epochs}-epoch run gives (with --lr-schedule constant it would)")


def _verified_skips(cluster, specs, earlier: dict, out: Path, args, task_kwargs, signals) -> set[str]:
    """The runs completed earlier in OUT that need no training: same settings, an intact checkpoint
    of all their epochs, trained on the very data this sweep reads (its fingerprint computed on a
    worker, where the data is). A completed run of other data: UsageError."""
    from fastcnn.checkpoint import CheckpointError, load_checkpoint
    candidates = {}
    for spec in specs:
        doc = earlier[spec.name]
        if doc is None or doc.get("status") != "completed" or not same_settings(doc, spec.config, args.dataset):
            continue
        try:
            ckpt = load_checkpoint(out / spec.name / CHECKPOINT_FILE)
        except CheckpointError:                # deleted or damaged: the run trains (or fails) again, honestly
            continue
        stopped_early = bool((doc.get("early_stopping") or {}).get("stopped_early"))
        if ckpt.epoch == spec.config.epochs or (stopped_early and ckpt.epoch < spec.config.epochs):
            data = (ckpt.header.get("extra") or {}).get("data")
            candidates[spec.name] = (spec, data if isinstance(data, dict) else {})
    if not candidates:
        return set()
    limits = sorted({(s.config.limit_train, s.config.limit_test) for s, _ in candidates.values()},
                    key=lambda t: tuple(-1 if v is None else v for v in t))
    fut = cluster.client.submit(data_fingerprints, args.dataset, task_kwargs["data_dir"], task_kwargs["download"],
                                limits, pure=False)
    from distributed import wait
    while not fut.done():
        if signals.received is not None:
            fut.cancel()
            return set()
        try:
            wait(fut, timeout=0.5)
        except TimeoutError:
            pass
    try:
        prints = fut.result()
    except Exception as exc:  # noqa: BLE001 -- the data cannot be read there: every run will say so
        write_line(f"{PROG}: note: cannot check the data of the runs completed earlier ({one_line(exc)}); they "
                   "train again", sys.stderr)
        return set()
    skips = set()
    for name, (spec, data) in candidates.items():
        now = prints[(spec.config.limit_train, spec.config.limit_test)]
        if data.get("sha256") != now:
            raise UsageError(f"choose another --out, or delete {out / name}: its completed run {name} was trained on "
                             f"other data ({data.get('name')}, {data.get('train_images')} train / "
                             f"{data.get('test_images')} test images, SHA-256 {str(data.get('sha256'))[:12]}) than "
                             f"this sweep reads (SHA-256 {now[:12]})")
        skips.add(name)
    return skips


def _run(argv, say) -> int:
    args = build_parser().parse_args(argv)
    _require_dask()
    if args.quiet:
        say = _silent
    specs = _specs(args)
    for spec in specs:
        if spec.name in _RESERVED:
            raise UsageError(f"rename run {spec.name!r}: {spec.name} is a file the sweep writes into --out")
    _check_execution(args, len(specs))
    out = Path(args.out).expanduser().resolve()
    if args.scheduler is None:                 # on a given cluster the folder is the workers' to find
        check_data_dir(args.data_dir)
    data_dir = str(Path(args.data_dir).expanduser().resolve()) if args.data_dir and args.scheduler is None \
        else args.data_dir
    if args.scheduler is None:
        _fetch_data(args.dataset, data_dir, not args.no_download)
    probe_writable(out, "--out")
    with Signals() as signals:                 # from here on every stop signal ends in a summary
        try:
            lock = FolderLock(out, LOCK_FILE, PROG).acquire()
        except FolderBusy as exc:
            raise UsageError(f"wait for it or choose another --out: {exc}") from None
        with lock:
            return _sweep(args, argv, specs, out, data_dir, signals, say)


def _check_outputs(out: Path) -> None:
    """The summary and plots replace only what an earlier sweep wrote there (UsageError)."""
    own = [("summary.json", b'{\n  "sweep"', "fastcnn-sweep summary"),
           ("summary.csv", ",".join(CSV_COLUMNS[:3]).encode("ascii"), "fastcnn-sweep summary"),
           *((name, PNG_SIGNATURE, "PNG image") for name in PLOT_FILES.values())]
    try:
        for name, signature, kind in own:
            check_output_file(out / name, "--out", signature=signature, kind=kind)
    except OutputRefused as exc:
        raise UsageError(str(exc)) from None


def _sweep(args, argv, specs, out: Path, data_dir, signals, say) -> int:
    # What OUT holds is read under the lock: no other sweep writes it meanwhile.
    _check_outputs(out)
    earlier = {spec.name: read_metrics(out / spec.name / METRICS_FILE) for spec in specs}
    _check_earlier(specs, earlier, out, args.dataset)
    task_kwargs = {"dataset": args.dataset, "data_dir": data_dir, "download": not args.no_download,
                   "timings": not args.no_timings}
    records: dict[str, dict] = {}
    t0 = time.perf_counter()
    bar = None

    def emit(text):
        if bar is None:
            say(text)
            return
        with bar.external_write_mode(file=sys.stdout):
            say(text)

    def on_stop(signum, hard):
        name = signal.Signals(signum).name
        msg = (f"{PROG}: {name} received again: stopping every run at once" if hard else
               f"{PROG}: {name} received: stopping every run before its next batch (send it again to stop at once)")
        emit(msg) if bar is not None else write_line(msg, sys.stderr)

    signals.on_stop = on_stop
    cluster = Cluster(scheduler=args.scheduler, workers=args.workers, threads_per_run=args.threads_per_run,
                      runs=len(specs), dashboard=args.dashboard)
    ended = "signal" if signals.received is not None else None
    if ended is None:
        with cluster:
            specs = [replace(s, config=replace(s.config, threads=cluster.threads)) for s in specs]
            skips = _verified_skips(cluster, specs, earlier, out, args, task_kwargs, signals)
            for spec in specs:
                if spec.name in skips:
                    records[spec.name] = {**record(spec, {"status": "completed", "document": earlier[spec.name]},
                                                   out, args.dataset), "skipped": True}
            todo = [spec for spec in specs if spec.name not in records]
            say(f"{PROG}: {len(specs)} run{'s' if len(specs) != 1 else ''} ({len(todo)} to train"
                f"{f', {len(specs) - len(todo)} completed earlier' if len(specs) > len(todo) else ''}) of "
                f"{args.dataset} on {cluster.description}; output in {out}")
            if cluster.dashboard_link:
                say(f"{PROG}: Dask dashboard: {cluster.dashboard_link}")
            bar = _progress(len(specs), len(specs) - len(todo), args.quiet)
            done = [len(specs) - len(todo)]
            for spec in specs:
                if spec.name in records:
                    emit(_line(records[spec.name], specs.index(spec) + 1, len(specs)))

            def on_result(spec, result):
                if result.get("document") is None:
                    doc = read_metrics(out / spec.name / METRICS_FILE)
                    if doc is not None and same_settings(doc, spec.config, args.dataset):
                        result = {**result, "document": doc}
                records[spec.name] = record(spec, result, out, args.dataset)
                done[0] += 1
                emit(_line(records[spec.name], done[0], len(specs)))
                if bar is not None:
                    bar.update(1)

            try:
                ended = run_all(cluster, todo, str(out), on_result=on_result, signals=signals,
                                task_kwargs=task_kwargs)
            finally:
                if bar is not None:
                    bar.close()
    ordered = [records[s.name] for s in specs if s.name in records]
    ordered += [record(s, {"status": "not-started", "reason": "the sweep stopped before this run started"},
                       out, args.dataset) for s in specs if s.name not in records]
    stopped = signals.received
    sweep_info = {"command": " ".join(shlex.quote(a) for a in [PROG, *(argv if argv is not None else sys.argv[1:])]),
                  "out": str(out), "cluster": cluster.description or None, "scheduler": args.scheduler,
                  "threads_per_run": cluster.threads, "seconds": time.perf_counter() - t0,
                  "stopped_by": signal.Signals(stopped).name if stopped else None, "versions": versions()}
    csv_path, json_path = write_summary(out, ordered, sweep_info)
    plot_paths = save_comparison_plots(out, ordered)
    say(_table(ordered))
    say(f"summary: {csv_path}, {json_path}")
    say(f"plots: {', '.join(str(p) for p in plot_paths)}")
    if stopped:
        how = "at once" if signals.hard else "before the next batch"
        write_line(f"{PROG}: stopped by {signal.Signals(stopped).name} {how}; finished runs and each run's last "
                   "complete epoch are kept; rerun the same command to resume", sys.stderr)
        return 128 + int(stopped)
    if ended == "scheduler":
        print_error(PROG, f"rerun the same command once the scheduler at {args.scheduler} is back: the connection to "
                          f"it was lost; runs it was running may still finish there (see {csv_path})")
        return EXIT_ERROR
    bad = [r for r in ordered if r["status"] != "completed"]
    if bad:
        first = bad[0]
        print_error(PROG, f"{len(bad)} of {len(ordered)} runs did not complete (see {csv_path}); first: "
                          f"{first['run']} {first['status']}: {_short(first.get('reason'), 100)}")
        return EXIT_ERROR
    return EXIT_OK


def _silent(*a, **k) -> None:
    pass


def _progress(total: int, initial: int, quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm  # imported here: only an interactive sweep draws a bar
    return tqdm(total=total, initial=initial, desc="runs", unit="run", file=sys.stderr, dynamic_ncols=True)


def sweep_main(argv: list[str] | None = None) -> int:
    """Entry point of ``fastcnn-sweep``; returns the exit code."""
    try:
        return _run(argv, write_line)
    except SystemExit as exc:                  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except UsageError as exc:
        print_error(PROG, exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        write_line(f"{PROG}: interrupted before any run started", sys.stderr)
        return EXIT_INTERRUPTED
    except RecursionError as exc:             # a RuntimeError, but not a bug of ours: input nested too deeply
        print_error(PROG, f"input nested too deeply: {exc}")
        return EXIT_USAGE
    except (ValueError, OSError, MemoryError, TimeoutError) as exc:
        print_error(PROG, str(exc) or type(exc).__name__)
        return EXIT_ERROR
    except Exception as exc:                   # a bug: still one line, the traceback on request
        if os.environ.get("FASTCNN_TRACEBACK"):
            raise
        print_error(PROG, f"unexpected {type(exc).__name__}: {exc} (set FASTCNN_TRACEBACK=1 to see the traceback)")
        return EXIT_ERROR

