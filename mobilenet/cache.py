"""The local cache, ``~/.cache/mobilenet``: where downloads and converted pretrained weights are kept.

``cache_dir()`` is ``$MOBILENET_CACHE``, else ``$XDG_CACHE_HOME/mobilenet``, else ``~/.cache/mobilenet``.
Pretrained weights live there as one weights file per variant and source::

    <cache>/pretrained/<variant>.<source>.safetensors     e.g. mobilenet_v1_025_128.keras.safetensors

``source`` is what the published file was (``keras``, ``slim``, ``tflite_quant``, ``huggingface``, ``timm``, ...;
see :data:`mobilenet.published.RELEASES`). This module only looks things up, so ``create_model(name,
pretrained=True)`` works offline once the cache holds the file; :mod:`mobilenet.hub` fills it (from a
downloaded published file, or from the Hugging Face Hub). When the weights are missing,
:class:`PretrainedNotFound` says in one line what to download and which command puts it in place.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from .published import RELEASES, Release

PRETRAINED = "pretrained"  # the cache's sub-folder of converted weights
SUFFIX = ".safetensors"
# Which cached source ``pretrained=True`` takes when several are there: float checkpoints with their
# classifier and real BatchNorm statistics first, Google's before timm's retraining, quantized and
# classifier-less files last.
PREFERENCE = ("slim", "keras", "huggingface", "tflite", "timm", "tflite_quant", "caffe", "keras_notop")


class PretrainedNotFound(FileNotFoundError):
    """Pretrained weights that are not in the cache (the message says what to download and the command to run)."""


@dataclass(frozen=True)
class Cached:
    """One converted weights file in the cache."""

    name: str  # the variant, e.g. mobilenet_v1_025_128
    source: str  # keras, slim, tflite_quant, huggingface, timm, ...
    path: Path


def cache_dir() -> Path:
    """``$MOBILENET_CACHE``, else ``$XDG_CACHE_HOME/mobilenet``, else ``~/.cache/mobilenet`` (not created here)."""
    cache = os.environ.get("MOBILENET_CACHE")
    if cache:
        return Path(cache).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mobilenet"


def pretrained_dir() -> Path:
    """The folder of converted pretrained weights, ``<cache>/pretrained``."""
    return cache_dir() / PRETRAINED


def cache_path(name: str, source: str) -> Path:
    """Where the weights of variant ``name`` from ``source`` are kept."""
    return pretrained_dir() / f"{name}.{source}{SUFFIX}"


def cached(name: str | None = None) -> list[Cached]:
    """The converted weights in the cache (of variant ``name`` only, if given), in order of :data:`PREFERENCE`."""
    folder = pretrained_dir()
    found = []
    for path in sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else ():
        variant, dot, source = path.name[: -len(SUFFIX)].partition(".")
        if dot and source and (name is None or variant == name):
            found.append(Cached(variant, source, path))
    rank = {s: i for i, s in enumerate(PREFERENCE)}
    return sorted(found, key=lambda c: (c.name, rank.get(c.source, len(rank)), c.source))


def releases(name: str) -> tuple[Release, ...]:
    """The published files of variant ``name`` (ValueError for a name outside the grid)."""
    if name not in RELEASES:
        close = difflib.get_close_matches(name, RELEASES, n=3)
        raise ValueError(f"no published weights for {name!r}: they exist for the 16 variants of the grid"
                         + (f" (closest: {', '.join(close)})" if close else " (`mobilenet pretrained --list`)"))
    return RELEASES[name]


def not_found_message(name: str, source: str | None = None, reason: str = "") -> str:
    """One line: the weights of ``name`` are not in the cache; which file to download and the command to run."""
    options = [r for r in releases(name) if source in (None, r.source)] or list(releases(name))
    head = f"no pretrained weights for {name}" + (f" from {source}" if source else "") + f" in {pretrained_dir()}"
    if reason:
        head += f" ({reason})"
    hub = next((r for r in options if r.hub), None)
    first = next((r for r in options if not r.hub), options[0])
    line = f"{head}: download {first.url} and run `mobilenet pretrained {name} --add {first.file_name}`"
    if hub is not None:
        line += f", or run `mobilenet pretrained {name}` online (Hugging Face Hub {hub.hub[0]})"
    return line + " (all files: `mobilenet pretrained --list`)"


def find(name: str, source: str | None = None) -> Path | None:
    """The cached weights of variant ``name`` (from ``source``, or the preferred one cached), or None."""
    for c in cached(name):
        if source in (None, c.source):
            return c.path
    return None


def pretrained_path(name: str, source: str | None = None) -> Path:
    """The cached weights of ``name`` (``source``: one of its published files, default: the preferred one cached).

    Raises :class:`PretrainedNotFound` with the file to download and the command that converts it into the cache.
    """
    path = find(name, source)
    if path is None:
        published = [r.source for r in releases(name)]
        if source is not None and source not in published:
            raise ValueError(f"no published {source} file for {name} (published: {', '.join(published)}; "
                             f"other files can be added with `mobilenet pretrained {name} --add FILE`)")
        raise PretrainedNotFound(not_found_message(name, source))
    return path


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"mobilenet_v1_025_128"`` -> (name, None); ``"mobilenet_v1_025_128.keras"`` -> (name, "keras")."""
    name, _, source = spec.partition(".")
    return name, source or None


def resolve_weights(spec: str | os.PathLike[str]) -> Path:
    """A weights file as given, or the cached pretrained weights a variant name (``name`` or ``name.source``)
    stands for: what ``--weights`` and ``--pretrained`` accept."""
    path = Path(spec)
    if path.exists():
        return path
    name, source = split_spec(os.fspath(spec))
    if name in RELEASES:
        return pretrained_path(name, source)
    return path  # not a file and not a variant: the loader says the file is missing


__all__ = ["PREFERENCE", "Cached", "PretrainedNotFound", "cache_dir", "cache_path", "cached", "find",
           "not_found_message", "pretrained_dir", "pretrained_path", "releases", "resolve_weights", "split_spec"]
