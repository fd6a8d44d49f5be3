"""The HTTP app of `mobilenet serve`: a JSON API and one web page, on Starlette (ASGI) served by Uvicorn.

Why an ASGI stack rather than the standard library's ``http.server``: the standard library's own
documentation says that server is not for production (it only implements basic checks), it has no multipart
parsing (the ``cgi`` module is gone from Python 3.13) and a thread per connection; Uvicorn parses HTTP with
h11, keeps connections alive, times idle clients out and shuts down gracefully, and Starlette gives routing,
streaming bodies and form parsing. Requests wait on the event loop (no thread each), the model runs on one
worker thread in batches (:mod:`mobilenet.serve.batcher`), image decoding runs in the thread pool.

Routes: ``GET /`` (the page), ``GET /health``, ``GET /model`` (kind, config, class names), ``POST /predict``
(an image -> top-k; ``?topk=5``) and ``POST /detect`` (an image -> boxes; ``?score_threshold=0.5``). The image
is the raw request body (``Content-Type: image/...``) or the first file of a ``multipart/form-data`` form
(``curl -F image=@photo.jpg``). Errors are JSON ``{"error": "..."}``: 400 a bad image or parameter, 404, 405,
413 a body over the size limit, 503 a full queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from ..data.decode import ImageDecodeError, decode_image, sniff
from .batcher import Batcher, Busy
from .model import ServedModel


class APIError(Exception):
    """An answer other than 200: status and one message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def page_html() -> str:
    """The single page (``mobilenet/serve/page.html``)."""
    return resources.files(__package__).joinpath("page.html").read_text()


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes, declared or streamed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the upload is {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the upload is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _image_bytes(request: Request, limit: int) -> bytes:
    data = await _body(request, limit)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):

        async def stream():  # the already-bounded body, for the parser
            yield data

        try:
            form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=10,
                                         max_part_size=limit).parse()
        except Exception as e:  # noqa: BLE001  (MultiPartException and malformed-boundary errors alike)
            raise APIError(400, f"malformed multipart form: {e}") from None
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise APIError(400, "the form has no file: send the image as a file field (e.g. -F image=@photo.jpg)")
        data = await files[0].read()
        await form.close()
    if not data:
        raise APIError(400, "no image: the request body is empty")
    return data


def _decode_message(data: bytes, error: Exception) -> str:
    """One line for an upload that is not a readable image: what its bytes look like, else the decoder's reason."""
    reason = sniff(data[:64], data[-1024:]) or str(error).split(": ", 1)[-1]
    if "cannot identify image file" in reason:  # Pillow's message names a BytesIO object, not a format
        reason = "no image format this server reads (JPEG, PNG, WebP, BMP, GIF, TIFF, PPM)"
    return f"not a readable image: {reason}"


def _number(request: Request, name: str, cast: type, default: Any, low: float, high: float) -> Any:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = cast(text)
    except ValueError:
        raise APIError(400, f"{name} must be a {cast.__name__}, got {text!r}") from None
    if not low <= value <= high:
        raise APIError(400, f"{name} must be in [{low}, {high}], got {text}")
    return value


def create_app(model: ServedModel, *, max_upload_bytes: int = 10 << 20, max_batch: int = 16,
               max_wait_ms: float = 5.0, max_queue: int = 256) -> Starlette:
    """The ASGI app serving ``model`` (see the module doc); the batcher starts with the app and stops with it."""
    batcher: Batcher | None = None

    async def infer(request: Request, kind: str) -> JSONResponse:
        if model.kind != kind:
            other = "/predict" if model.kind == "classifier" else "/detect"
            raise APIError(400, f"this server runs a {model.kind}: use POST {other}")
        topk = _number(request, "topk", int, 5, 1, max(len(model.class_names), 1))
        threshold = _number(request, "score_threshold", float, 0.5, 0.0, 1.0)
        data = await _image_bytes(request, max_upload_bytes)
        try:
            image = await run_in_threadpool(decode_image, data, "the upload")
        except ImageDecodeError as e:
            raise APIError(400, _decode_message(data, e)) from None
        assert batcher is not None
        try:
            future = batcher.submit(image)
        except Busy as e:
            raise APIError(503, f"busy: {e}; try again") from None
        try:
            raw = await asyncio.wrap_future(future)
        except ValueError as e:  # e.g. non-finite outputs: broken weights
            raise APIError(500, str(e)) from None
        return JSONResponse(model.format(raw, topk=topk, score_threshold=threshold))

    async def predict(request: Request) -> JSONResponse:
        return await infer(request, "classifier")

    async def detect(request: Request) -> JSONResponse:
        return await infer(request, "detector")

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "kind": model.kind, **(batcher.stats if batcher else {})})

    async def info(request: Request) -> JSONResponse:
        return JSONResponse(model.info)

    page = page_html()

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        nonlocal batcher
        batcher = Batcher(model, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)
        try:
            yield
        finally:
            batcher.close()

    routes = [Route("/", index), Route("/health", health), Route("/model", info),
              Route("/predict", predict, methods=["POST"]), Route("/detect", detect, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={APIError: api_error, HTTPException: http_error})
