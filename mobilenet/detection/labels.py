"""Which dataset class a detector's (or a predictions file's) class is scored as: one rule for every path.

``detect eval --weights`` (the model's stored class names) and ``detect eval --predictions`` (the labels
``detect predict`` wrote) both go through :func:`class_index`, so a COCO model is scored the same way on VOC or
KITTI whether it runs now or ran before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# Pascal VOC names of classes COCO (and TF Lite's labelmap) spells differently.
VOC_TO_COCO = {"aeroplane": "airplane", "motorbike": "motorcycle", "sofa": "couch", "tvmonitor": "tv",
               "diningtable": "dining table", "pottedplant": "potted plant"}


def class_index(names: Sequence[str], dataset_names: Sequence[str],
                label_map: Mapping[str, str] | None = None) -> list[int]:
    """For each of ``names``, the index of the dataset class it is scored as, -1 for none (left out).

    A name matches, in this order: ``label_map`` (its name -> a dataset class name, e.g. COCO's ``person`` ->
    KITTI's ``Pedestrian``), the same name, the same name in another case (COCO's ``car``, KITTI's ``Car``),
    VOC's spelling of a COCO class (``VOC_TO_COCO``: ``tv`` is ``tvmonitor``). ValueError when ``label_map``
    names a class the dataset does not have.
    """
    label_map = dict(label_map or {})
    exact = {n: i for i, n in enumerate(dataset_names)}
    unknown = [v for v in label_map.values() if v not in exact]
    if unknown:
        raise ValueError(f"the label map names {unknown[0]!r}, not a class of the dataset "
                         f"({', '.join(dataset_names)})")
    folded: dict[str, int] = {}
    for i, n in enumerate(dataset_names):
        folded.setdefault(n.casefold(), i)
    for i, n in enumerate(dataset_names):
        if n.casefold() in VOC_TO_COCO:
            folded.setdefault(VOC_TO_COCO[n.casefold()], i)
    return [exact[label_map[n]] if n in label_map else exact.get(n, folded.get(str(n).casefold(), -1))
            for n in names]


def parse_label_map(text: str | None) -> dict[str, str]:
    """``--label-map``: ``"person=Pedestrian,car=Car"`` (source name = dataset name, comma-separated), or the path
    of a JSON file holding such an object."""
    from pathlib import Path

    if not text:
        return {}
    if Path(text).is_file():
        import json

        data = json.loads(Path(text).read_text())
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ValueError(f"{text}: a label map file holds one JSON object of names, e.g. {{\"person\": "
                             f"\"Pedestrian\"}}")
        return data
    pairs = [p for p in text.split(",") if p.strip()]
    bad = [p for p in pairs if p.count("=") != 1 or not all(s.strip() for s in p.split("="))]
    if bad:
        raise ValueError(f"--label-map: expected name=dataset_name pairs separated by commas (or a JSON file), "
                         f"got {bad[0]!r}")
    return {a.strip(): b.strip() for a, b in (p.split("=") for p in pairs)}


__all__ = ["VOC_TO_COCO", "class_index", "parse_label_map"]
