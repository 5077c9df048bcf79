"""The Starlette application of ``fastcnn-serve``.

Routes: ``GET /`` the page, ``GET /static/...`` its script and style (all from the package: no
network needed), ``GET /api/info`` the model's classes and input size, ``POST /api/predict`` image
bytes -> JSON (:func:`fastcnn.serve.predict.predict_bytes`; ``?detail=1`` adds maps and saliency).

Limits: a body above ``max_body`` bytes gets 413, from its Content-Length header before any of it is
read, or as soon as a body without one grows past the limit; an image that cannot be used gets 400
with ``{"error": "one line"}``. Inference runs in a worker thread, so the server keeps answering;
:mod:`fastcnn.inspect` gives each request its own copy of the layers' state.
"""
from __future__ import annotations

from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fastcnn.images import InputError
from fastcnn.serve.predict import ModelInfo, predict_bytes

#: The default request body limit: a large phone photo as JPEG fits, a flood does not.
MAX_BODY = 8 * 1024 * 1024
_ASSETS = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
           "style.css": "text/css; charset=utf-8"}


class _TooLarge(Exception):
    pass


def _asset(name: str) -> bytes:
    return resources.files("fastcnn.serve").joinpath("static", name).read_bytes()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ValueError("Content-Length must be a number of bytes")
        if int(declared) > limit:
            raise _TooLarge(int(declared))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(model, info: ModelInfo, *, max_body: int = MAX_BODY, threads: int | None = None) -> Starlette:
    """The application serving ``model`` (described by ``info``); bodies above ``max_body`` bytes: 413.
    ``threads``: Numba threads per request (None: Numba's own setting, every core)."""
    assets = {name: _asset(name) for name in _ASSETS}          # read once: a broken install fails at start

    def answer(data: bytes, detail: bool) -> dict:
        if threads is not None and getattr(model, "backend_name", None) == "numba":
            import numba
            numba.set_num_threads(threads)                  # per calling thread: the worker's own setting
        return predict_bytes(model, info, data, detail=detail)

    async def page(request: Request) -> Response:
        return Response(assets["index.html"], media_type=_ASSETS["index.html"])

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            return _error(404, f"no such file: {name}")
        return Response(assets[name], media_type=_ASSETS[name], headers={"Cache-Control": "no-cache"})

    async def model_info(request: Request) -> Response:
        return JSONResponse({"classes": info.names or [str(k) for k in range(10)], "side": info.side,
                             "dataset": info.dataset, "max_body": max_body})

    async def predict(request: Request) -> Response:
        try:
            data = await _read_body(request, max_body)
        except _TooLarge:
            return _error(413, f"request body larger than the {max_body:,} bytes allowed: send a smaller image")
        except ValueError as exc:
            return _error(400, str(exc))
        detail = request.query_params.get("detail", "0") not in ("", "0", "false", "no")
        try:
            result = await run_in_threadpool(answer, data, detail)
        except InputError as exc:
            return _error(400, str(exc))
        return JSONResponse(result)

    async def method_not_allowed(request: Request) -> Response:
        return _error(405, "send the image with POST /api/predict")

    routes = [Route("/", page), Route("/static/{name}", static), Route("/api/info", model_info),
              Route("/api/predict", predict, methods=["POST"]),
              Route("/api/predict", method_not_allowed, methods=["GET"])]
    return Starlette(routes=routes)
