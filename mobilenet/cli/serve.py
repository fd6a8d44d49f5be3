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
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted image upload")
    p.add_argument("--max-batch", type=int, default=16, help="images per forward pass at most")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more images")
    p.add_argument("--max-queue", type=int, default=256, help="waiting images before new requests get 503")
    p.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    from ..distributed import resolve_device
    from . import CLIError

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    try:
        import uvicorn

        from ..serve.app import create_app
        from ..serve.model import describe, load_served
    except ImportError as e:
        raise CLIError(f"serving needs Starlette and Uvicorn: pip install 'mobilenet[serve]' ({e.name} is missing)"
                       ) from None
    model = load_served(args.weights, resolve_device(args.device))
    app = create_app(model, max_upload_bytes=int(args.max_upload_mb * (1 << 20)), max_batch=args.max_batch,
                     max_wait_ms=args.max_wait_ms, max_queue=args.max_queue)
    # bind here, so a taken port or a foreign address is one line (Uvicorn would log it and exit with 3)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        sock.close()
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    print(f"serving {describe(model)} at http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
    return 0
