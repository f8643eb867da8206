"""The results table ``capsbench run`` prints at the end of a sweep."""

from __future__ import annotations

import sys


def dead_per_layer(record: dict, split: str = "test") -> str:
    """'primary 0/16 · conv1 3/16 · class 0/10': dead capsule types per layer (eq. 13)."""
    metrics = record.get("metrics") or {}
    layers = (metrics.get("layers") or {}).get(split) or {}
    order = [name for name in metrics.get("layer_order") or [] if name in layers]
    parts = []
    for name in order + sorted(set(layers) - set(order)):
        layer = layers[name]
        types = layer.get("types") or []
        total = len(types) if types else "?"
        parts.append(f"{name} {layer.get('dead_count', '?')}/{total}")
    return " · ".join(parts) or "n/a"


def rows(records: list[dict]) -> list[list[str]]:
    out = []
    for record in records:
        metrics = record.get("metrics") or {}
        acc = metrics.get("test_accuracy")
        speed = (record.get("timings") or {}).get("images_per_s")
        status = record.get("status", "?")
        if status == "diverged" and record.get("diverged_epoch") is not None:
            status = f"diverged@{record['diverged_epoch']}"
        out.append([
            str(record.get("run_id", "?")),
            status,
            f"{100 * acc:.1f}%" if isinstance(acc, (int, float)) else "n/a",
            dead_per_layer(record),
            f"{speed:.0f}" if isinstance(speed, (int, float)) else "n/a",
        ])
    return out


HEADER = ["run", "status", "test acc", "dead capsule types per layer (test)", "images/s"]


def print_summary(records: list[dict], file=None) -> None:
    """A rich table on a terminal, plain aligned text otherwise (logs, CI)."""
    file = file or sys.stdout
    table_rows = rows(records)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency; keep plain output working anyway
        Console = None
    if Console is not None:
        table = Table(title=f"{len(records)} run(s)")
        for column in HEADER:
            table.add_column(column, overflow="fold")
        for row in table_rows:
            style = None if row[1] == "ok" else "red"
            table.add_row(*row, style=style)
        Console(file=file, width=max(120, Console(file=file).width)).print(table)
    else:
        widths = [max(len(r[i]) for r in [HEADER, *table_rows]) for i in range(len(HEADER))]
        for row in [HEADER, *table_rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)), file=file)
    for record in records:
        if record.get("status") not in ("ok", None) and record.get("error"):
            print(f"{record.get('run_id')}: {record['error']}", file=file)
