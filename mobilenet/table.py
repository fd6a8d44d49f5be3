"""One table renderer for every table this package prints: aligned text, markdown, CSV (raw values) or JSON.

``Table(columns, rows).render("markdown")``: numbers are right-aligned with thousands separators and a
fixed number of decimals per column (``digits``); ``None`` prints as ``-``. The profiler's tables, the
README's tables regenerated from it, and the command line's metric tables all come from here.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from . import strict_json

FORMATS = ("table", "markdown", "csv", "json")


@dataclass
class Table:
    """Rows of cells under named columns, rendered as text, markdown, CSV (raw values) or JSON."""

    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    digits: dict[str, int] = field(default_factory=dict)  # decimals of float columns (default 2)

    def render(self, fmt: str) -> str:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        if fmt == "json":
            return strict_json.dumps({"caption": self.caption, "columns": self.columns,
                               "rows": [dict(zip(self.columns, r, strict=True)) for r in self.rows],
                               "notes": self.notes}, indent=2)
        if fmt == "csv":
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(self.columns)
            writer.writerows(self.rows)
            return buf.getvalue().rstrip("\n")
        cells = [[cell(v, self.digits.get(c, 2)) for c, v in zip(self.columns, r, strict=True)] for r in self.rows]
        right = [all(numeric(r[i]) for r in self.rows) for i in range(len(self.columns))]
        if fmt == "markdown":
            out = [f"*{self.caption}*", ""] if self.caption else []
            out.append("| " + " | ".join(self.columns) + " |")
            out.append("|" + "|".join("---:" if r else ":---" for r in right) + "|")
            out += ["| " + " | ".join(c) + " |" for c in cells]
            out += [""] + [f"- {n}" for n in self.notes] if self.notes else []
            return "\n".join(out)
        widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(self.columns)]

        def fmt_row(c: list[str]) -> str:
            return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(c, widths, right, strict=True))

        out = [self.caption] if self.caption else []
        out += [fmt_row(self.columns).rstrip(), "  ".join("-" * w for w in widths)]
        out += [fmt_row(c).rstrip() for c in cells]
        out += [f"  * {n}" for n in self.notes]
        return "\n".join(out)


def numeric(v: Any) -> bool:
    """True for a number (or None, a missing one): right-aligned."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) or v is None


def cell(v: Any, digits: int = 2) -> str:
    """One value as printed: ``-`` for None, yes/no, thousands separators, ``digits`` decimals."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)
