"""``open_image_dataset(source)``: one string names any supported dataset.

====================================  =======================================================================
source                                what it opens
====================================  =======================================================================
``path/to/root``                      ImageFolder directory ``root/<class>/<image>``
``data.zip``, ``data.tar(.gz)``       the same tree inside an archive (a single top folder like ``train/`` is ok)
``cifar10:PATH`` (``#train``/``#test``)  official ``cifar-10-python.tar.gz``, its extracted folder, or a folder
                                      holding ``train.zip``/``test.zip``; ``cifar10`` alone: the cache (download)
``digits`` (``#train``/``#test``)     the bundled handwritten digits (offline, see ``mobilenet.data.digits``)
``path/to/flat`` + ``labels=FILE``    a flat folder of images labelled by ``FILE`` (``<file> <label>`` lines) or
                                      by ``labels="from-filename"`` (``n01440764_tench.JPEG``; see ``.flat``)
====================================  =======================================================================
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .archive import archive_kind, open_archive
from .cifar10 import open_cifar10
from .dataset import ImageDataset, Transform
from .digits import open_digits
from .flat import FROM_FILENAME, open_flat_folder
from .folder import open_folder


def _split_fragment(source: str, allowed: tuple[str, ...], default: str) -> tuple[str, str]:
    body, sep, split = source.partition("#")
    if not sep:
        return body, default
    if split not in allowed:
        raise ValueError(f"unknown split {split!r} in {source!r}: expected one of {', '.join(allowed)}")
    return body, split


def _check_class_names(ds: ImageDataset, class_names: Sequence[str] | None, source: str) -> ImageDataset:
    # Fixed-class sources (CIFAR-10, digits) accept a class list only if it is the same list.
    if class_names is not None and list(class_names) != ds.class_names:
        raise ValueError(f"{source}: its classes are fixed ({ds.class_names}); got a different class_names list "
                         f"of {len(class_names)} starting {list(class_names)[:3]}")
    return ds


def open_image_dataset(source: str | os.PathLike[str], transform: Transform | None = None,
                       class_names: Sequence[str] | None = None, *, check: str = "quick",
                       labels: str | os.PathLike[str] | None = None) -> ImageDataset:
    """Open the dataset named by ``source`` (see the module docstring for the forms).

    Returns a ``torch.utils.data.Dataset``: ``ds[i] -> (transform(image), label)``, ``image`` an RGB PIL image
    (returned as is when ``transform`` is None), with ``ds.class_names``, ``ds.targets`` and ``ds.skipped``.

    Args:
        source: a folder, an archive, ``"cifar10:PATH[#split]"`` or ``"digits[#split]"``.
        transform: applied to each PIL image (e.g. ``train_transform(...)`` or ``eval_transform(...)``).
        class_names: map folder names onto this list (e.g. the ImageNet WordNet ids a weights file carries);
            folders missing from it are an error naming them.
        check: scan-time validation of folders and archives: ``"quick"`` (first/last bytes of every file) or
            ``"none"`` (fastest start on huge, trusted folders; bad files are still replaced at load time).
        labels: label a flat folder of images instead of reading class folders: a labels file of
            ``<file name> <label>`` lines (label: a class name or an integer index into ``class_names``) or
            ``"from-filename"`` (the prefix before the first ``_``). Labels are resolved against ``class_names``
            by name, so a 1001-way list starting with ``background`` needs no offset. Missing, unlabelled and
            unknown entries are left out and listed in ``ds.skipped`` (see ``mobilenet.data.flat``).
    """
    text = os.fspath(source)
    if labels is not None:
        path = Path(text).expanduser()
        if not path.is_dir():
            what = "a file" if path.is_file() else "not found"
            raise (ValueError if path.exists() else FileNotFoundError)(
                f"labels={os.fspath(labels)!r} needs a folder of images, but {text} is {what}")
        if os.fspath(labels) != FROM_FILENAME and not Path(labels).is_file():
            raise FileNotFoundError(f"labels file not found: {os.fspath(labels)} (or use labels={FROM_FILENAME!r} "
                                    "to take each label from the file-name prefix before the first '_')")
        return open_flat_folder(path, labels, transform=transform, class_names=class_names, check=check)
    if text.startswith("digits") and not Path(text).exists():
        body, split = _split_fragment(text, ("train", "test"), "all")
        if body != "digits":
            raise ValueError(f"unknown dataset {text!r}: did you mean 'digits', 'digits#train' or 'digits#test'?")
        return _check_class_names(open_digits(split, transform=transform), class_names, text)
    if text.startswith("cifar10") and not Path(text).exists():
        body, split = _split_fragment(text, ("train", "test"), "train")
        if body == "cifar10":
            path = None
        elif body.startswith("cifar10:") and len(body) > len("cifar10:"):
            path = Path(body[len("cifar10:"):]).expanduser()
        else:
            raise ValueError(f"unknown dataset {text!r}: expected 'cifar10', 'cifar10:PATH', 'cifar10:PATH#test'")
        return _check_class_names(open_cifar10(path, split, transform=transform), class_names, text)
    path = Path(text).expanduser()
    if path.is_dir():
        return open_folder(path, transform=transform, class_names=class_names, check=check)
    if path.is_file():
        if archive_kind(path) is None:
            raise ValueError(f"not a dataset: {path} is a file but not a .zip/.tar/.tar.gz archive")
        return open_archive(path, transform=transform, class_names=class_names, check=check)
    raise FileNotFoundError(f"dataset not found: {text} (expected a folder, a .zip/.tar archive, "
                            f"'cifar10:PATH' or 'digits')")
