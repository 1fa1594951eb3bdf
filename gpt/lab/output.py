"""Where the lab's results go: an out_dir with a JSON report (and PNGs), plus a table on standard output."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gpt.atomic import write_text
from gpt.errors import UserError


def prepare_out_dir(out_dir: str, report_name: str, overwrite: bool) -> Path:
    """The out_dir, created; an earlier run's report there is kept unless overwrite is set."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"out_dir {path} is a file: give a folder")
    if (path / report_name).exists() and not overwrite:
        raise UserError(f"{path / report_name} holds an earlier run's results: pick another --out_dir, "
                        "or add --overwrite to replace them")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, report: dict[str, Any]) -> None:
    write_text(path, json.dumps(_clean(report), indent=1) + "\n")


def table(rows: list[list[Any]], header: list[str]) -> str:
    """Rows as aligned text columns."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else "-"
    return "-" if value is None else str(value)
