"""Measure ``fastcnn-serve``: requests per second and latency percentiles with N concurrent clients
on the loopback interface, and who used the CPU meanwhile.

    python -m fastcnn.serve.load MODEL [--clients 8] [--requests 400] [--detail] [--threads N] [--image PNG]

Starts ``fastcnn-serve MODEL --port 0`` (127.0.0.1), sends a few warm-up requests, then exactly
``--requests`` POSTs of one image from ``--clients`` threads, each on its own keep-alive
connection, and stops the server with Ctrl-C. Reports the throughput, the latency p50 / p99 / max,
and the cores used by the server, by these clients and by every other program (from /proc on
Linux): the clients share the machine with the server, and other programs' load makes a figure
"contended", as fastcnn-bench marks its own.
"""
from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from fastcnn.cpumeter import CONTENDED_OTHER_LOAD, machine_busy_seconds


def _process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) of process ``pid`` from /proc; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def start_server(model, *extra, timeout=300):
    """(process, url) of ``fastcnn-serve MODEL --port 0 EXTRA``, once it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "fastcnn.serve.cli", str(model), "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    end, said = time.monotonic() + timeout, []
    for line in proc.stdout:
        said.append(line.strip())
        m = re.search(r"serving (http://\S+) ", line)
        if m:
            threading.Thread(target=proc.stdout.read, daemon=True).start()      # keep draining its output
            return proc, m.group(1)
        if time.monotonic() > end:
            break
    proc.kill()
    raise RuntimeError(f"fastcnn-serve did not start: {' / '.join(said[-3:])}")


def run_load(url: str, body: bytes, clients: int, requests: int, detail: bool) -> list[float]:
    """Send ``requests`` POSTs from ``clients`` threads; the latencies in seconds (all must be 200)."""
    u = urlsplit(url)
    path = "/api/predict" + ("?detail=1" if detail else "")
    counter = iter(range(requests))
    lock = threading.Lock()

    def client(_):
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        times = []
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            t0 = time.perf_counter()
            conn.request("POST", path, body=body, headers={"Content-Type": "image/png"})
            res = conn.getresponse()
            res.read()
            times.append(time.perf_counter() - t0)
            if res.status != 200:
                raise RuntimeError(f"HTTP {res.status}")
        conn.close()
        return times

    with ThreadPoolExecutor(clients) as pool:
        return [t for times in pool.map(client, range(clients)) for t in times]


def _percentile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastcnn.serve.load", description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--detail", action="store_true", help="ask for maps and saliency too (the page does)")
    p.add_argument("--threads", type=int, default=None, help="fastcnn-serve's --threads (default: its own)")
    p.add_argument("--image", type=Path, default=None, help="PNG or JPEG to send (default: a drawn 7, 140x140)")
    args = p.parse_args(argv)
    from fastcnn.serve.predict import sample_digit

    body = args.image.read_bytes() if args.image else sample_digit()
    proc, url = start_server(args.model, *(["--threads", str(args.threads)] if args.threads else []))
    try:
        run_load(url, body, args.clients, min(20, args.requests), args.detail)          # warm-up
        busy0, own0, srv0, t0 = machine_busy_seconds(), time.process_time(), _process_cpu(proc.pid), time.perf_counter()
        lat = sorted(run_load(url, body, args.clients, args.requests, args.detail))
        wall = time.perf_counter() - t0
        busy1, own1, srv1 = machine_busy_seconds(), time.process_time(), _process_cpu(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    ms = [1e3 * t for t in lat]
    print(f"{len(lat)} requests{' with maps and saliency' if args.detail else ''} from {args.clients} clients, "
          f"{args.threads or 'all'} Numba thread{'' if args.threads == 1 else 's'} per request, "
          f"in {wall:.2f} s: {len(lat) / wall:.1f} requests/s; latency p50 {_percentile(ms, 0.5):.1f} ms, "
          f"p99 {_percentile(ms, 0.99):.1f} ms, max {ms[-1]:.1f} ms")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if None not in (busy0, busy1, srv0, srv1):
        server, own = (srv1 - srv0) / wall, (own1 - own0) / wall
        other = max(0.0, (busy1 - busy0) / wall - server - own)
        contended = other > CONTENDED_OTHER_LOAD
        print(f"cores used on average (of {cpus}): server {server:.2f}, these clients {own:.2f}, other programs "
              f"{other:.2f}{' -> CONTENDED: figures are lower than on a quiet machine' if contended else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
