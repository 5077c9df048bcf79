"""``fastcnn-serve MODEL [--host H] [--port P] [--max-body BYTES] [--threads N] [--backend numba|numpy]``

Loads MODEL (a file of ``fastcnn-train --save-model`` or ``--checkpoint``), compiles the kernels by
answering one request internally, then listens on http://127.0.0.1:8000 (printed; ``--port 0`` picks
a free port and prints it). Open that address in a browser to draw digits; programs POST PNG or JPEG
bytes to ``/api/predict``. Binds to 127.0.0.1 unless ``--host`` says otherwise. Ctrl-C stops it
(exit 0). Errors (a bad model file, a port in use, the serve extra missing) are one line and exit 1;
usage errors exit 2.
"""
from __future__ import annotations

import contextlib
import socket
import sys
import time
from pathlib import Path

from fastcnn._cli import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    UsageError,
    int_at_least,
    positive_int,
    print_error,
    write_line,
)

PROG = "fastcnn-serve"


def build_parser() -> Parser:
    from fastcnn.backend import BACKENDS

    p = Parser(prog=PROG, description=(
        "Serve a web page where you draw a digit (or drop an image) and see the network's prediction, its "
        "prepared input, the first two layers' feature maps and the saliency; and a JSON API, POST /api/predict "
        "with PNG or JPEG bytes."),
        epilog="Exit status: 0 stopped with Ctrl-C, 1 an error (one line on stderr), 2 a usage error.")
    p.add_argument("model", type=Path, metavar="MODEL", help="model file written by fastcnn-train")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int_at_least(0), default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--max-body", type=positive_int, default=None, metavar="BYTES",
                   help="largest request body accepted; larger ones get 413 (default: 8 MiB)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="Numba threads per request (default: Numba's, every core: measured faster than 1 on a "
                        "busy 2-core machine, see docs/inspect.md)")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="implementation of the convolutions (default: $FASTCNN_BACKEND, else numba)")
    return p


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = "choose another with --port (or --port 0 for a free one)" if port else "check --host"
        raise OSError(f"{hint}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _serve(args) -> int:
    try:
        import uvicorn

        from fastcnn.serve.app import MAX_BODY, create_app
    except ImportError as exc:
        print_error(PROG, f"install the serve extra: pip install 'fastcnn[serve]' ({exc})")
        return EXIT_ERROR
    from fastcnn.checkpoint import CheckpointError
    from fastcnn.images import InputError
    from fastcnn.serve.predict import load_model, predict_bytes, sample_digit

    try:
        model, info = load_model(args.model, backend=args.backend)
    except CheckpointError as exc:
        print_error(PROG, exc)
        return EXIT_ERROR
    write_line(f"{PROG}: {args.model} loaded ({model.backend_name} backend)")
    start = time.perf_counter()
    compiling = contextlib.nullcontext()
    if model.backend_name == "numba":
        import numba

        from fastcnn.kernels import first_compile
        if args.threads is not None and args.threads > numba.config.NUMBA_NUM_THREADS:
            raise UsageError(f"--threads must be at most {numba.config.NUMBA_NUM_THREADS} (Numba's thread count)")
        compiling = first_compile(lambda: write_line(f"{PROG}: compiling the Numba kernels, first run only "
                                                     "(a minute or two on a busy machine) ..."))
    try:
        with compiling:             # the first answer compiles (or loads) every kernel a request uses
            predict_bytes(model, info, sample_digit(), detail=True)
    except InputError as exc:
        print_error(PROG, f"the model cannot answer a sample request: {exc}")
        return EXIT_ERROR
    sock = _bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    app = create_app(model, info, max_body=args.max_body or MAX_BODY, threads=args.threads)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    write_line(f"{PROG}: ready in {time.perf_counter() - start:.1f} s; serving http://{shown}:{port} "
               "(Ctrl-C stops)")
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:           # uvicorn re-raises the Ctrl-C it handled, after shutting down
        pass
    finally:
        sock.close()
    write_line(f"{PROG}: stopped")
    return EXIT_OK


def serve_main(argv=None) -> int:
    """Entry point of ``fastcnn-serve``; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.port > 65535:
            raise UsageError(f"--port must lie in 0..65535, got {args.port}")
    except UsageError as exc:
        print_error(PROG, exc)
        return EXIT_USAGE
    except SystemExit as exc:           # --help, or argparse's own usage error
        return exc.code if isinstance(exc.code, int) else 0
    from fastcnn._process import tune_process
    tune_process()
    try:
        return _serve(args)
    except UsageError as exc:
        print_error(PROG, exc)
        return EXIT_USAGE
    except OSError as exc:
        print_error(PROG, exc.strerror or exc)
    except KeyboardInterrupt:           # Ctrl-C while loading or compiling
        write_line(f"{PROG}: stopped")
        return EXIT_OK
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(serve_main())
