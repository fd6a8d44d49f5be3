"""The 1000 ImageNet-1k classes (sorted WordNet ids) and the 1001-way TF variant with "background" first."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

BACKGROUND = "background"


@lru_cache(maxsize=1)
def _table() -> tuple[tuple[str, str], ...]:
    # Provenance: mobilenet/assets/imagenet_classes.txt was built from timm 1.0.31 (Apache-2.0, PyPI wheel):
    # timm/data/_info/imagenet_synsets.txt (the 1000 WordNet ids in the standard sorted class order) joined
    # with timm/data/_info/imagenet_synset_to_lemma.txt (their WordNet lemmas). One "wnid<TAB>names" line each.
    text = resources.files("mobilenet").joinpath("assets", "imagenet_classes.txt").read_text(encoding="utf-8")
    rows = tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line.strip())
    assert len(rows) == 1000 and all(len(r) == 2 for r in rows), "corrupt imagenet_classes.txt asset"
    return rows  # type: ignore[return-value]


def imagenet_wnids(*, background: bool = False) -> list[str]:
    """WordNet ids in class-index order (``background=True``: TF's 1001-way list, "background" at 0)."""
    wnids = [w for w, _ in _table()]
    return [BACKGROUND, *wnids] if background else wnids


def imagenet_class_names(*, background: bool = False) -> list[str]:
    """Human-readable names ("tench, Tinca tinca") in class-index order; 1001 entries with ``background``."""
    names = [n for _, n in _table()]
    return [BACKGROUND, *names] if background else names
