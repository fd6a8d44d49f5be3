"""Images for calibration and for before/after accuracy checks of deployed models.

``source`` is either a folder of images (searched recursively; no labels needed, e.g.
``../shared/data/imagenet/images``) or anything :func:`mobilenet.data.open_image_dataset` opens
(``digits#test``, ``cifar10:PATH#test``, an archive). Labels for accuracy come from the dataset,
or, for a flat folder of ImageNet photos named ``<wnid>_*.JPEG``, from the WordNet id in the name.
An image that cannot be read (truncated, not an image, a decompression bomb) is left out and
reported in one warning, never replaced by a copy of another (which would skew the calibration).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.dataset import ImageDataset, warn_skipped
from ..data.decode import ImageDecodeError, read_image
from ..preprocessing import Preprocessing


def _image_files(folder: Path) -> list[Path]:
    from ..data.decode import IMAGE_EXTENSIONS

    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _spread(n_total: int, limit: int | None) -> list[int]:
    # Evenly spaced indices, so a class-sorted source gives a calibration set drawn from every class.
    if limit is None or limit >= n_total:
        return list(range(n_total))
    return [round(i * (n_total - 1) / max(limit - 1, 1)) for i in range(limit)] if limit > 1 else [0]


def _is_image_folder(folder: Path) -> bool:
    # An ImageFolder tree has its images one level down (root/<class>/<image>), none at the top.
    from ..data.decode import IMAGE_EXTENSIONS

    top = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return not top and any(p.is_dir() for p in folder.iterdir())


def load_images(
    source: str | os.PathLike[str],
    preprocessing: Preprocessing,
    *,
    limit: int | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, list[str]]:
    """``limit`` images (evenly spread over the source) as a ``(N, 3, R, R)`` float tensor, with their names."""
    if limit is not None and limit < 1:
        raise ValueError(f"the number of images must be >= 1, got {limit}")
    path = Path(os.fspath(source)).expanduser()
    if path.is_dir() and not _is_image_folder(path):
        files = _image_files(path)
        if not files:
            raise ValueError(f"no images found in {path}")
        picked = [files[i] for i in _spread(len(files), limit)]
        tensors, names, skipped = [], [], []
        for p in tqdm(picked, desc="images", disable=not progress, leave=False):
            try:
                tensors.append(preprocessing(read_image(p)))
                names.append(p.name)
            except ImageDecodeError as error:
                skipped.append((str(p), str(error).split(": ", 1)[-1]))
        return _stacked(tensors, skipped, source), names
    from ..data import open_image_dataset

    ds = open_image_dataset(source, transform=preprocessing)
    if len(ds) == 0:
        raise ValueError(f"no images found in {source}")
    xs, names, skipped = [], [], []
    for i in tqdm(_spread(len(ds), limit), desc="images", disable=not progress, leave=False):
        try:
            xs.append(_readable_item(ds, i)[0])
            names.append(ds.sample_name(i))
        except ImageDecodeError as error:
            skipped.append((ds.sample_name(i), str(error).split(": ", 1)[-1]))
    return _stacked(xs, skipped, source), names


def _readable_item(ds: ImageDataset, i: int) -> tuple[torch.Tensor, int]:
    # Never the next image in place of an unreadable one: that would calibrate on copies.
    return ds.get(i, ds.transform, replace_unreadable=False)


def _stacked(tensors: list[torch.Tensor], skipped: list[tuple[str, str]], source: str | os.PathLike[str]
             ) -> torch.Tensor:
    warn_skipped(skipped, os.fspath(source))
    if not tensors:
        example = f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise ValueError(f"no readable image in {os.fspath(source)}: {len(skipped)} left out{example}")
    return torch.stack(tensors)


def load_labelled(
    source: str | os.PathLike[str],
    preprocessing: Preprocessing,
    *,
    num_classes: int,
    class_names: list[str] | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and their labels in the model's class indices: ``(N, 3, R, R)``, ``(N,)``.

    A flat folder of ``<wnid>_*.JPEG`` files is labelled by WordNet id for 1000/1001-way models
    (1001: TF's background-first order). Otherwise the dataset's class names are mapped onto
    ``class_names`` by name (or taken as indices when the model has none).
    """
    path = Path(os.fspath(source)).expanduser()
    if path.is_dir() and not _is_image_folder(path):
        if num_classes not in (1000, 1001):
            raise ValueError(f"{path} is a flat folder: labels can only come from ImageNet WordNet ids in file "
                             f"names, but the model has {num_classes} classes (use a <class>/<image> folder)")
        from ..imagenet_classes import imagenet_wnids

        index = {w: i for i, w in enumerate(imagenet_wnids(background=num_classes == 1001))}
        images, names = load_images(path, preprocessing, limit=limit, progress=progress)
        wnids = [n.split("_", 1)[0] for n in names]
        unknown = [n for n, w in zip(names, wnids, strict=True) if w not in index]
        if unknown:
            raise ValueError(f"{len(unknown)} file name(s) in {path} do not start with an ImageNet WordNet id, "
                             f"e.g. {unknown[0]!r}")
        return images, torch.tensor([index[w] for w in wnids])
    from ..data import open_image_dataset
    from ..evaluate import label_map

    ds = open_image_dataset(source, transform=preprocessing)
    mapping = label_map(ds.class_names, class_names, num_classes)
    idx = _spread(len(ds), limit)
    xs, ys, skipped = [], [], []
    for i in tqdm(idx, desc="images", disable=not progress, leave=False):
        try:
            x, y = _readable_item(ds, i)
        except ImageDecodeError as error:
            skipped.append((ds.sample_name(i), str(error).split(": ", 1)[-1]))
            continue
        xs.append(x)
        ys.append(mapping[y])
    return _stacked(xs, skipped, source), torch.tensor(ys)
