"""`mobilenet serve`: a classifier or detector behind a JSON API and a web page.

Examples::

    mobilenet serve runs/digits/best.safetensors                  # http://127.0.0.1:8000/
    mobilenet serve detect.tflite --port 8080                      # a detector: POST /detect
    curl -s -X POST --data-binary @photo.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/predict
    curl -s -F image=@photo.jpg 'http://127.0.0.1:8000/detect?score_threshold=0.4'
"""

from __future__ import annotations

import argparse
import socket

from .flags import CLIError, int_at_least, non_negative_float, positive_float, positive_int

NAME = "serve"
HELP = "serve a classifier or detector over HTTP: JSON API and a web page"
DESCRIPTION = __doc__ + """
Routes: GET / (the page: drop or pick an image, see the top-5 bars or the boxes), GET /health, GET /model,
POST /predict (?topk=5), POST /detect (?score_threshold=0.5). The image is the raw body or a multipart file.
Concurrent requests are batched on one model thread; a full queue answers 503, never drops a request.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="classifier or detector: .safetensors, .tflite, or .onnx (an export of ours)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int_at_least(1, 65535), default=8000, help="TCP port (default: 8000)")
    p.add_argument("--max-upload-mb", type=positive_float, default=10.0,
                   help="largest accepted image upload (default: 10)")
    p.add_argument("--max-batch", type=positive_int, default=16, help="images per forward pass at most (default: 16)")
    p.add_argument("--max-wait-ms", type=non_negative_float, default=5.0,
                   help="how long a batch waits for more images (default: 5)")
    p.add_argument("--max-queue", type=positive_int, default=256,
                   help="waiting images before new requests get 503 (default: 256)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")


def run(args: argparse.Namespace) -> int:
    from ..distributed import resolve_device

    try:
        import uvicorn

        from ..serve.app import create_app
        from ..serve.model import describe, load_served
    except ImportError as e:
        raise CLIError(f"serving needs Starlette and Uvicorn: pip install 'mobilenet[serve]' ({e.name} is missing)"
                       ) from None
    # bind first, before the model loads: a taken port or a foreign address is one line at once (Uvicorn would
    # log it and exit with 3)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        sock.close()
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    try:
        model = load_served(args.weights, resolve_device(args.device))
    except BaseException:
        sock.close()
        raise
    app = create_app(model, max_upload_bytes=int(args.max_upload_mb * (1 << 20)), max_batch=args.max_batch,
                     max_wait_ms=args.max_wait_ms, max_queue=args.max_queue)
    print(f"serving {describe(model)} at http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
    return 0
