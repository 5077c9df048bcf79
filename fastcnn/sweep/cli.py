"""``fastcnn-sweep``: run a grid of ``fastcnn-train`` configurations on Dask and compare them.

Exit codes: 0 every run completed, 1 a run failed or diverged (the others went on; the summary
says why) or the sweep could not run (data, cluster, files), 2 invalid arguments, 130 interrupted
(SIGINT), 143 terminated (SIGTERM). Every error is one line on stderr, never a traceback.
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
    EXIT_TERMINATED,
    EXIT_USAGE,
    HelpFormatter,
    Parser,
    UsageError,
    check_data_dir,
    int_at_least,
    print_error,
    probe_writable,
    versions,
    write_line,
)
from fastcnn.sweep.execute import Cluster, SweepStopped, run_all
from fastcnn.sweep.grid import DATASETS, DEFAULT_EPOCHS, OPTIONS, build_runs, load_runs_file, parse_list
from fastcnn.sweep.report import PLOT_FILES, record, save_comparison_plots, write_summary
from fastcnn.sweep.worker import METRICS_FILE, read_metrics, same_settings, settings_diff
from fastcnn.train import RESUME_KEYS

PROG = "fastcnn-sweep"

_EPILOG = f"""\
examples:
  fastcnn-sweep                                   # SGD with momentum vs AdamW, {DEFAULT_EPOCHS} epochs, into sweep/
  fastcnn-sweep --optimizer sgd,adamw --lr 0.01,0.002 --seed 0,1,2 --out lr-grid
  fastcnn-sweep --batchnorm off,on --dropout 0,0.5 --epochs 2 --limit-train 10000
  fastcnn-sweep --runs runs.toml                  # runs listed in a file (TOML or JSON)
  fastcnn-sweep --scheduler tcp://10.0.0.5:8786   # on an existing Dask cluster

grid: every training option takes a comma-separated list; the sweep runs their product. --momentum
goes to the sgd runs only. Runs are named after the settings that differ (sgd_lr0.01_seed1).
runs file: [defaults] then one [[runs]] table per run (JSON: {{"defaults": {{...}}, "runs": [...]}}),
keys as the options (lr, batch_size or batch-size, ...) plus an optional name; a list value expands
as a grid inside that entry; options on the command line fill in what an entry leaves out.
output: OUT/<run>/metrics.json and checkpoint.npz for each run; OUT/summary.csv, OUT/summary.json
and the plots {', '.join(PLOT_FILES.values())}.
rerun: the same command in the same --out skips completed runs and resumes the others from their
checkpoints. stopping: Ctrl-C stops every run before its next batch and writes the summary; a
second Ctrl-C stops at once.
exit codes: 0 all runs completed, 1 a run failed or diverged or the sweep could not run,
2 bad arguments, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""


def build_parser() -> Parser:
    p = Parser(prog=PROG, formatter_class=HelpFormatter, epilog=_EPILOG,
               description="Train several fastcnn MNIST CNN configurations side by side on a Dask cluster (a\n"
                           "local one by default) and compare them: summary table and plots.")
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
    if rec["epochs_done"]:
        text += (f"  test {_pct(rec['final_test_acc'])} (best {_pct(rec['best_test_acc'])} @ epoch "
                 f"{rec['best_epoch']})  {rec['epochs_done']} epoch{'s' if rec['epochs_done'] != 1 else ''}")
        if rec["mean_epoch_seconds"] is not None:
            text += f"  {rec['mean_epoch_seconds']:.1f} s/epoch"
    if rec["status"] != "completed" and rec.get("reason"):
        text += f"  ({_short(rec['reason'])})"
    return text


def _table(records: list[dict]) -> str:
    width = max(len("run"), *(len(r["run"]) for r in records))
    rows = [f"{'run':<{width}}  {'status':<11}  {'final':>7}  {'best':>7}  {'s/epoch':>7}"]
    for r in records:
        sec = "-" if r["mean_epoch_seconds"] is None else f"{r['mean_epoch_seconds']:.1f}"
        rows.append(f"{r['run']:<{width}}  {r['status']:<11}  {_pct(r['final_test_acc']):>7}  "
                    f"{_pct(r['best_test_acc']):>7}  {sec:>7}")
    return "\n".join(rows)


def _run(argv, say) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet:
        say = _silent
    specs = _specs(args)
    out = Path(args.out).expanduser().resolve()
    earlier = {spec.name: read_metrics(out / spec.name / METRICS_FILE) for spec in specs}
    for spec in specs:                          # a rerun may resume or skip its own runs, never replace others
        doc = earlier[spec.name]
        diff = settings_diff(doc, spec.config, args.dataset, RESUME_KEYS) if doc is not None else []
        if diff:
            key, mine, theirs = diff[0]
            raise UsageError(f"choose another --out, or delete {out / spec.name}: it holds a run {spec.name} of "
                             f"other settings ({key} {theirs!r} there, {mine!r} now)")
    if args.scheduler is None:                 # on a given cluster the folder is the workers' to find
        check_data_dir(args.data_dir)
    data_dir = str(Path(args.data_dir).expanduser().resolve()) if args.data_dir and args.scheduler is None \
        else args.data_dir
    if args.scheduler is None:
        _fetch_data(args.dataset, data_dir, not args.no_download)
    probe_writable(out, "--out")
    task_kwargs = {"dataset": args.dataset, "data_dir": data_dir, "download": not args.no_download,
                   "timings": not args.no_timings}

    records: dict[str, dict] = {}
    t0 = time.perf_counter()
    with Cluster(scheduler=args.scheduler, workers=args.workers, threads_per_run=args.threads_per_run,
                 runs=len(specs), dashboard=args.dashboard) as cluster:
        specs = [replace(s, config=replace(s.config, threads=cluster.threads)) for s in specs]
        todo = []
        for spec in specs:
            doc = earlier[spec.name]
            if doc is not None and doc.get("status") == "completed" and same_settings(doc, spec.config, args.dataset):
                records[spec.name] = {**record(spec, {"status": "completed", "document": doc}, out, args.dataset),
                                      "skipped": True}
            else:
                todo.append(spec)
        say(f"{PROG}: {len(specs)} run{'s' if len(specs) != 1 else ''} ({len(todo)} to train"
            f"{f', {len(specs) - len(todo)} completed earlier' if len(specs) > len(todo) else ''}) of {args.dataset}"
            f" on {cluster.description}; output in {out}")
        if cluster.dashboard_link:
            say(f"{PROG}: Dask dashboard: {cluster.dashboard_link}")
        bar = _progress(len(specs), len(specs) - len(todo), args.quiet)
        done = [len(specs) - len(todo)]

        def emit(text):
            if bar is None:
                say(text)
                return
            with bar.external_write_mode(file=sys.stdout):
                say(text)

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

        def on_stop(signum):
            msg = (f"{PROG}: {signal.Signals(signum).name} received: stopping every run before its next batch "
                   "(send it again to stop at once)")
            emit(msg) if bar is not None else write_line(msg, sys.stderr)

        stopped, hard = None, None
        try:
            stopped = run_all(cluster, todo, str(out), on_result=on_result, on_stop=on_stop, task_kwargs=task_kwargs)
        except SweepStopped as exc:
            stopped = hard = exc.signum
        finally:
            if bar is not None:
                bar.close()
    ordered = [records[s.name] for s in specs if s.name in records]
    ordered += [record(s, {"status": "not-started", "reason": "the sweep stopped before this run started"},
                       out, args.dataset) for s in specs if s.name not in records]
    sweep_info = {"command": " ".join(shlex.quote(a) for a in [PROG, *(argv if argv is not None else sys.argv[1:])]),
                  "out": str(out), "cluster": cluster.description, "scheduler": args.scheduler,
                  "threads_per_run": cluster.threads, "seconds": time.perf_counter() - t0,
                  "stopped_by": signal.Signals(stopped).name if stopped else None, "versions": versions()}
    csv_path, json_path = write_summary(out, ordered, sweep_info)
    plot_paths = save_comparison_plots(out, ordered)
    say(_table(ordered))
    say(f"summary: {csv_path}, {json_path}")
    say(f"plots: {', '.join(str(p) for p in plot_paths)}")
    if stopped:
        how = "at once" if hard else "before the next batch"
        write_line(f"{PROG}: stopped by {signal.Signals(stopped).name} {how}; finished runs and each run's last "
                   "complete epoch are kept; rerun the same command to resume", sys.stderr)
        return EXIT_TERMINATED if stopped == signal.SIGTERM else EXIT_INTERRUPTED
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
    except (ValueError, OSError, MemoryError, TimeoutError) as exc:
        print_error(PROG, str(exc) or type(exc).__name__)
        return EXIT_ERROR
    except Exception as exc:                   # a bug: still one line, the traceback on request
        if os.environ.get("FASTCNN_TRACEBACK"):
            raise
        print_error(PROG, f"unexpected {type(exc).__name__}: {exc} (set FASTCNN_TRACEBACK=1 to see the traceback)")
        return EXIT_ERROR

