"""The README's picture of `mobilenet serve`'s page: the imported COCO SSD on a frame of the shared clip
(Intel IoT DevKit sample-videos, CC BY 4.0), uploaded in headless chromium, boxes drawn by the page.

    python benchmarks/serve_page_picture.py [--frame 300] [--out docs/serve_page.png]

Needs mobilenet[serve,video], selenium, and Debian's chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobilenet.serve.app import create_app  # noqa: E402
from mobilenet.serve.model import load_served  # noqa: E402
from mobilenet.video.frames import open_frames  # noqa: E402
from tests.serve_helpers import chromium, running_server, upload_and_wait  # noqa: E402

DATA = Path(os.environ.get("MOBILENET_DATA", REPO.parent / "shared" / "data"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frame", type=int, default=300, help="frame of the clip (300: someone at the table)")
    p.add_argument("--out", default=str(REPO / "docs" / "serve_page.png"))
    args = p.parse_args()
    with open_frames(DATA / "video" / "one-by-one-person-detection.mp4") as src:
        frame = next(f for f in src if f.index == args.frame).rgb
    model = load_served(DATA / "weights" / "tflite" / "detect.tflite")
    with tempfile.TemporaryDirectory() as tmp, running_server(create_app(model)) as base, \
            chromium(width=1000, height=560) as driver:
        path = Path(tmp) / f"frame{args.frame}.jpg"
        Image.fromarray(frame).save(path, quality=92)
        boxes = upload_and_wait(driver, base, path, "#boxes .box")
        labels = [b.text for b in boxes]
        shot = driver.get_screenshot_as_png()
    # a 64-colour palette keeps the picture small enough to commit
    Image.open(io.BytesIO(shot)).convert("RGB").quantize(64).save(args.out, optimize=True)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size // 1024} KiB): {', '.join(labels)}")


if __name__ == "__main__":
    main()
