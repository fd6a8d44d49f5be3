"""The ImageFolder layout ``root/<class>/<image>`` (ImageNet's train/val layout), from a directory on disk.

``index_tree`` turns a list of relative file paths into labelled samples; the archive readers reuse it, so a
folder and a zip of that folder give the same dataset. Classes are the sorted folder names, or, when
``class_names`` is given (e.g. the 1000 ImageNet WordNet ids that travel with a weights file), folder names are
mapped onto that list, so a folder holding only some of the classes gets the right indices.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from .dataset import EncodedImageDataset, Transform, require_readable, warn_skipped
from .decode import has_image_extension, sniff

CHECK_MODES = ("quick", "none")
_HEAD_BYTES = 16
_TAIL_BYTES = 1024


def _hidden(parts: Sequence[str]) -> bool:
    # Dot files, macOS resource forks ("__MACOSX/", "._x.jpg") and the like are not data: ignored silently.
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def unsafe_path(path: str) -> bool:
    """True for a member name that points outside its archive: absolute (``/x``, ``C:/x``) or through ``..``.

    Such names come from hand-made or malicious archives; read as a tree they would add a class (``etc``, ``..``)."""
    if path.startswith(("/", "\\")):
        return True
    parts = path.replace("\\", "/").split("/")
    return ".." in parts or (len(parts[0]) == 2 and parts[0][1] == ":")


def index_tree(paths: Iterable[str], class_names: Sequence[str] | None = None, *, strip_single_top: bool = False,
               source: str = "") -> tuple[list[tuple[str, int]], list[str], list[tuple[str, str]]]:
    """Label the files of an ImageFolder tree.

    Args:
        paths: file paths relative to the root, '/'-separated; directory entries (ending in '/') may be included.
        class_names: the class list to map folder names onto; ``None``: the sorted folder names.
        strip_single_top: drop leading folders while every image sits under the same one (archives often
            hold ``train/<class>/...`` rather than ``<class>/...``).
        source: used in error messages.

    Returns:
        ``(samples, class_names, skipped)``: samples are ``(path, label)`` sorted by path; skipped lists
        ``(path, reason)`` for non-image files, files outside a class folder, empty class folders and paths
        that point outside the tree (absolute, or through ``..``: ignored, so they cannot add a class).

    Raises:
        ValueError: no image in any class folder, or folders that are not in ``class_names``.
    """
    files: list[tuple[str, ...]] = []
    original: dict[tuple[str, ...], str] = {}  # parts -> the name to read it by (e.g. "./cat/1.jpg" in a tar)
    dirs: set[tuple[str, ...]] = set()
    skipped: list[tuple[str, str]] = []
    for path in paths:
        if unsafe_path(path):
            if not path.endswith("/"):
                skipped.append((path, "unsafe path (absolute or through '..'): ignored"))
            continue
        parts = tuple(p for p in path.split("/") if p not in ("", "."))
        if not parts or _hidden(parts):
            continue
        if path.endswith("/"):
            dirs.add(parts)
        else:
            files.append(parts)
            original[parts] = path
            dirs.update(parts[:k] for k in range(1, len(parts)))
    prefix: tuple[str, ...] = ()  # leading folders stripped, e.g. ("train",)
    if strip_single_top:
        images = [f for f in files if has_image_extension(f[-1])]
        while images and all(len(f) > len(prefix) + 2 for f in images):
            tops = {f[len(prefix)] for f in images}
            if len(tops) != 1:
                break
            prefix += (tops.pop(),)
    depth = len(prefix)
    by_class: dict[str, list[str]] = {}
    for d in sorted(dirs):  # every class folder, empty or not
        if len(d) == depth + 1 and d[:depth] == prefix:
            by_class.setdefault(d[depth], [])
    for parts in sorted(files):
        path = original[parts]
        if parts[:depth] != prefix or len(parts) < depth + 2:
            skipped.append((path, "not inside a class folder"))
        elif not has_image_extension(parts[-1]):
            skipped.append((path, f"not an image file (extension {PurePosixPath(parts[-1]).suffix or 'none'})"))
        else:
            by_class.setdefault(parts[depth], []).append(path)
    for name, members in sorted(by_class.items()):
        if not members:
            skipped.append(("/".join(prefix + (name,)) + "/", "empty class folder"))
    found = sorted(by_class)
    if not any(by_class.values()):
        loose = sum(1 for f in files if len(f) == depth + 1 and has_image_extension(f[-1]))
        hint = f" ({loose} image(s) lie directly in the root: put them in one folder per class)" if loose else ""
        raise ValueError(f"no images found in {source or 'the tree'}: expected the layout root/<class>/<image> "
                         f"with extensions .jpg/.png/...; found {len(files)} file(s){hint}")
    if class_names is None:
        names = found
    else:
        names = list(class_names)
        unknown = sorted({c for c, members in by_class.items() if members} - set(names))  # empty ones: harmless
        if unknown:
            shown = ", ".join(unknown[:10]) + (f" ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
            raise ValueError(f"{source or 'data'}: class folder(s) not in the given class list of {len(names)}: "
                             f"{shown} (the list starts {names[:3]})")
    label_of = {name: i for i, name in enumerate(names)}
    samples = [(path, label_of[c]) for c, members in by_class.items() for path in members]
    samples.sort()
    return samples, names, skipped


class FolderReader:
    """Reads files under a root directory by relative path (plain files: safe in any worker process)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def head_tail(self, name: str) -> tuple[bytes, bytes]:
        with open(self.root / name, "rb") as f:
            head = f.read(_HEAD_BYTES)
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL_BYTES))
            return head, f.read()


def check_samples(reader, samples: list[tuple[str, int]], check: str) -> tuple[list[tuple[str, int]],
                                                                                list[tuple[str, str]]]:
    """Scan-time validation: ``"quick"`` sniffs the first and last bytes of every file; ``"none"`` trusts them."""
    if check not in CHECK_MODES:
        raise ValueError(f"check must be one of {CHECK_MODES}, got {check!r}")
    if check == "none":
        return samples, []
    kept, bad = [], []
    for name, label in samples:
        try:
            reason = sniff(*reader.head_tail(name))
        except OSError as error:
            reason = f"cannot read: {error}"
        if reason is None:
            kept.append((name, label))
        else:
            bad.append((name, reason))
    return kept, bad


def walk(root: Path, *, folders: bool = False) -> list[str]:
    """Every file under ``root`` (links followed) as a sorted-walk relative POSIX path; folders end in ``/``."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel = Path(dirpath).relative_to(root).as_posix()
        rel = "" if rel == "." else rel + "/"
        dirnames.sort()
        if folders:
            paths += [rel + d + "/" for d in dirnames]
        paths += [rel + f for f in filenames]
    return paths


def open_folder(root: str | os.PathLike[str], *, transform: Transform | None = None,
                class_names: Sequence[str] | None = None, check: str = "quick") -> EncodedImageDataset:
    """An ImageFolder dataset from the directory ``root/<class>/<image>`` (files in nested folders count too)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    samples, names, skipped = index_tree(walk(root, folders=True), class_names, source=str(root))
    reader = FolderReader(root)
    samples, bad = check_samples(reader, samples, check)
    skipped += bad
    require_readable(samples, skipped, str(root))
    warn_skipped(skipped, str(root))
    return EncodedImageDataset(reader, samples, names, transform=transform, skipped=skipped, source=str(root))
