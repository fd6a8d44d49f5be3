"""JSON that every parser accepts: Python's ``json`` writes ``NaN`` and ``Infinity`` for non-finite floats,
which are not JSON (browsers, ``jq`` and most languages refuse the whole file). Here they become ``null``.

``dumps``/``dump`` are drop-in for ``json.dumps``/``json.dump`` on results, metrics and predictions; numpy and
0-dim torch scalars become numbers, tuples become lists.
"""

from __future__ import annotations

import json
import math
from typing import IO, Any


def jsonable(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by ``None`` (recursively through dicts, lists and tuples)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    item = getattr(obj, "item", None)  # numpy scalars, 0-dim tensors
    if callable(item) and getattr(obj, "ndim", 1) == 0:
        return jsonable(item())
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` with ``NaN``/``inf`` written as ``null`` (and refused anywhere else)."""
    return json.dumps(jsonable(obj), allow_nan=False, **kwargs)


def dump(obj: Any, f: IO[str], **kwargs: Any) -> None:
    """``json.dump`` with ``NaN``/``inf`` written as ``null``."""
    json.dump(jsonable(obj), f, allow_nan=False, **kwargs)
