"""Concurrent requests -> batches: one worker thread runs the model; requests wait in a bounded queue.

A request puts its image in the queue and waits on a future. The worker takes the first waiting image,
gathers more for at most ``max_wait_ms`` (up to ``max_batch``), runs one forward pass and answers every
future of the batch. Nothing is dropped: when the queue is full (``max_queue`` waiting images) a new request
is refused at once with :class:`Busy` (the server answers 503), rather than waiting without bound.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

from PIL import Image

from .model import ServedModel


class Busy(Exception):
    """The queue is full; try again later."""


class Batcher:
    """Batch images for ``model`` on one worker thread (see the module doc)."""

    def __init__(self, model: ServedModel, *, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_queue: int = 256) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1, max_queue >= 1, max_wait_ms >= 0; got {max_batch}, {max_queue}, "
                             f"{max_wait_ms}")
        self.model = model
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self._queue: queue.Queue[tuple[Image.Image, Future] | None] = queue.Queue(maxsize=max_queue)
        self.stats = {"images": 0, "batches": 0, "largest_batch": 0, "errors": 0}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="mobilenet-batcher", daemon=True)
        self._thread.start()

    def submit(self, image: Image.Image) -> Future:
        """Queue one RGB image; the future gets the model's raw output for it (or its exception)."""
        fut: Future = Future()
        try:
            self._queue.put_nowait((image, fut))
        except queue.Full:
            raise Busy(f"{self._queue.maxsize} images are already waiting") from None
        return fut

    def close(self) -> None:
        """Stop the worker after the images already queued."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            self._run(batch)

    def _run(self, batch: list[tuple[Image.Image, Future]]) -> None:
        live = [(im, f) for im, f in batch if f.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            outputs: list[Any] = self.model.run([im for im, _ in live])
        except Exception as e:  # noqa: BLE001  (every waiting request gets the error, the worker goes on)
            with self._lock:
                self.stats["errors"] += 1
            for _, f in live:
                f.set_exception(e)
            return
        with self._lock:
            self.stats["images"] += len(live)
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(live))
        for (_, f), out in zip(live, outputs, strict=True):
            f.set_result(out)
