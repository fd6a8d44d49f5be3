"""A flat folder of images plus labels: ImageNet's validation set as it is usually shipped.

Two ways to label the images:

* a labels file, one image a line: ``<file name> <label>``, whitespace- or comma-separated, ``#`` starts a
  comment. The file name is relative to the folder (sub-folders allowed; the extension may be left out, as in
  ImageNet's ``LOC_val_solution.csv``, whose header line and extra box fields are ignored). The label is a class
  name (e.g. a WordNet id ``n01440764``) or an integer index into the class list.
* ``labels="from-filename"``: the label is the file name's prefix before the first ``_`` (the ImageNet
  convention ``n01440764_tench.JPEG``).

Labels are resolved against ``class_names`` (the list stored with a weights file) by name first, so a 1001-way
TF model whose list starts with ``background`` gets ``n01440764`` at index 1 without any offset arithmetic;
an integer label is an index into that same list (so class i of the 1000 is index i+1 for such a model, and a
label 0, ``background``, is reported as a likely 0-based index rather than scored: prefer names).
Without ``class_names`` the classes are the sorted distinct labels (or ``"0" .. "max"`` when every label is an
integer).

Nothing here raises for a single bad entry: files listed but missing, images with no label, labels that are not
classes, duplicate and malformed lines all land in ``ds.skipped`` as ``(name, reason)`` with a warning
summarising them; only a folder where no image is left is an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from .dataset import EncodedImageDataset, Transform, require_readable, warn_skipped
from .decode import has_image_extension
from .folder import FolderReader, _hidden, check_samples, walk

FROM_FILENAME = "from-filename"
BACKGROUND = "background"  # entry 0 of TF-slim/TF Lite 1001-way class lists
_SEPARATORS = re.compile(r"[,\s]+")


def parse_labels_file(path: str | os.PathLike[str]) -> tuple[list[tuple[int, str, str]], list[tuple[str, str]]]:
    """Read ``<file name> <label>`` lines.

    Returns:
        ``(entries, problems)``: entries are ``(line number, file name, label)`` in file order; problems are
        ``(f"{path}:{line}", reason)`` for lines with a file name but no label.

    Raises:
        FileNotFoundError: the labels file does not exist.
        ValueError: it is not UTF-8 text.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets write a BOM before the header
    except UnicodeDecodeError as error:
        raise ValueError(f"labels file {path} is not UTF-8 text: {error}") from error
    entries: list[tuple[int, str, str]] = []
    problems: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = [f for f in _SEPARATORS.split(line.split("#", 1)[0].strip()) if f]
        if not fields:
            continue
        if len(fields) == 1:
            problems.append((f"{path.name}:{number}", f"no label after the file name {fields[0]!r}"))
            continue
        entries.append((number, fields[0], fields[1]))  # further fields (e.g. boxes) are not labels
    return entries, problems


def label_from_filename(name: str) -> str | None:
    """``"n01440764_tench.JPEG" -> "n01440764"``; ``None`` when the base name has no ``_`` before its suffix."""
    stem = PurePosixPath(name).stem
    prefix, sep, _ = stem.partition("_")
    return prefix if sep and prefix else None


class _LabelResolver:
    """Label text -> class name: by name in ``class_names`` first, then as an integer index into it."""

    def __init__(self, class_names: Sequence[str] | None) -> None:
        self.names = list(class_names) if class_names is not None else None
        self.index = {n: i for i, n in enumerate(self.names)} if self.names is not None else None

    def resolve(self, label: str) -> tuple[str | None, str | None]:
        """``(class name, None)`` or ``(None, reason it is not a class)``."""
        if self.names is None:
            return label, None
        assert self.index is not None
        if label in self.index:
            return label, None
        if re.fullmatch(r"[+-]?\d+", label):
            i = int(label)
            if self.names[0] == BACKGROUND and i == 0:
                # Nothing in ImageNet is labelled background: a 0 here is almost surely a 0-based index into the
                # 1000 classes (Caffe's val.txt), which would be off by one against this 1001-way list.
                return None, (f"label 0 is {BACKGROUND!r} in this {len(self.names)}-class list: integer labels "
                              "index the weights' class list (class i of 1000 is i+1 here); write WordNet ids")
            if 0 <= i < len(self.names):
                return self.names[i], None
            return None, f"label index {i} outside the {len(self.names)} classes"
        return None, (f"label {label!r} is not among the {len(self.names)} classes "
                      f"(they start {', '.join(map(repr, self.names[:3]))})")


def _class_list(labels: Iterable[str]) -> list[str]:
    # No class list given: integer labels are output indices ("0".."max"), anything else a name (sorted).
    distinct = set(labels)
    if distinct and all(re.fullmatch(r"\d+", x) for x in distinct):
        return [str(i) for i in range(max(int(x) for x in distinct) + 1)]
    return sorted(distinct)


def index_flat(files: Sequence[str], labels: str | os.PathLike[str], class_names: Sequence[str] | None = None,
               *, source: str = "") -> tuple[list[tuple[str, int]], list[str], list[tuple[str, str]]]:
    """Label the image files of a flat folder.

    Args:
        files: file paths relative to the folder, '/'-separated (non-images and hidden files are ignored).
        labels: a labels file path, or ``"from-filename"``.
        class_names: the class list to resolve labels against (see the module docstring); ``None``: the labels.
        source: used in messages.

    Returns:
        ``(samples, class_names, skipped)``: samples ``(path, label index)`` sorted by path; skipped
        ``(name, reason)`` for every entry left out.

    Raises:
        ValueError: no image could be labelled (the message gives the counts and first reasons).
    """
    images = sorted(f for f in files if has_image_extension(f) and not _hidden(f.split("/")))
    resolver = _LabelResolver(class_names)
    skipped: list[tuple[str, str]] = []
    raw: dict[str, str] = {}  # image path -> label text
    if os.fspath(labels) == FROM_FILENAME:
        for f in images:
            label = label_from_filename(f)
            if label is None:
                skipped.append((f, "no label: the file name has no '<label>_' prefix"))
            else:
                raw[f] = label
    else:
        entries, skipped = parse_labels_file(labels)
        present = set(images)
        by_stem: dict[str, list[str]] = {}  # "dir/name" without extension -> images (labels may omit it)
        for f in images:
            by_stem.setdefault(str(PurePosixPath(f).with_suffix("")), []).append(f)
        for k, (number, name, label) in enumerate(entries):
            where = f"{Path(labels).name}:{number}"
            key = "/".join(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))  # "./a.jpg"
            if key not in present:
                stems = by_stem.get(key, [])
                if len(stems) == 1:
                    key = stems[0]
                elif len(stems) > 1:
                    skipped.append((name, f"listed at {where} but ambiguous: {', '.join(stems[:3])}"))
                    continue
                elif k == 0 and resolver.resolve(label)[0] is None:
                    continue  # a header line such as "ImageId,PredictionString"
                else:
                    skipped.append((name, f"listed at {where} but missing from the folder"))
                    continue
            if key in raw:
                if raw[key] != label:
                    skipped.append((name, f"listed again at {where} with another label {label!r} "
                                          f"(kept {raw[key]!r})"))
                continue
            raw[key] = label
        unlabelled = [f for f in images if f not in raw]
        skipped += [(f, f"no label: not listed in {Path(labels).name}") for f in unlabelled]
    resolved: dict[str, str] = {}
    for f, label in raw.items():
        name, reason = resolver.resolve(label)
        if name is None:
            skipped.append((f, reason or "unknown label"))
        else:
            resolved[f] = name
    if not resolved:
        reasons = "; ".join(f"{n}: {r}" for n, r in skipped[:3])
        raise ValueError(f"no labelled images in {source or 'the folder'}: {len(images)} image(s), "
                         f"{len(skipped)} left out" + (f" (e.g. {reasons})" if reasons else ""))
    names = list(class_names) if class_names is not None else _class_list(resolved.values())
    label_of = {n: i for i, n in enumerate(names)}
    samples = sorted((f, label_of[c]) for f, c in resolved.items())
    return samples, names, skipped


def open_flat_folder(root: str | os.PathLike[str], labels: str | os.PathLike[str], *,
                     transform: Transform | None = None, class_names: Sequence[str] | None = None,
                     check: str = "quick") -> EncodedImageDataset:
    """A labelled dataset from a folder of images (searched recursively) and a labels file or ``"from-filename"``.

    ``ds.skipped`` lists every image or labels-file entry left out, with the reason; see the module docstring.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    samples, names, skipped = index_flat(walk(root), labels, class_names, source=str(root))
    reader = FolderReader(root)
    samples, bad = check_samples(reader, samples, check)
    skipped += bad
    require_readable(samples, skipped, str(root))
    warn_skipped(skipped, str(root))
    return EncodedImageDataset(reader, samples, names, transform=transform, skipped=skipped, source=str(root))
