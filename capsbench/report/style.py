"""Deterministic matplotlib output: same data, same PNG bytes (on one matplotlib version).

Figures are built with ``matplotlib.figure.Figure`` directly (the Agg canvas, no pyplot
global state), inside fixed rcParams, and saved without the ``Software`` PNG text chunk
(the only varying metadata Agg writes). Fonts are matplotlib's bundled DejaVu Sans.

``FIGURE_VERSION`` goes into every figure's data hash (see ``data_hash``): bump it when
a change to the plotting code should make ``capsbench leaderboard check`` call the
committed figures stale.

Example::

    with figure_style():
        fig = new_figure(6, 4)
        ax = fig.subplots()
        ax.plot([1, 2], [3, 4])
        save_png(fig, "out.png")
"""

from __future__ import annotations

import hashlib
import io
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FIGURE_VERSION = 1
DPI = 110
RC = {
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.hashsalt": "capsbench",  # fixed ids, should anyone save SVG
    "path.simplify": False,
    "savefig.dpi": DPI,
    "figure.dpi": DPI,
}
# Colour-blind safe (Okabe-Ito) colours for methods, in a fixed order.
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def line_styles(names) -> dict[str, tuple[str, str]]:
    """name -> (colour, marker), by sorted name: a method looks the same in every figure of a data set."""
    return {name: (COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)]) for i, name in enumerate(sorted(set(names)))}


@contextmanager
def figure_style():
    import matplotlib

    with matplotlib.rc_context(RC):
        yield


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def save_png(fig, path: str | Path) -> bytes:
    """Write ``fig`` atomically as a PNG and return its bytes."""
    from capsbench.io import write_bytes

    data = png_bytes(fig)
    write_bytes(path, data)
    return data


def data_hash(kind: str, data: Any) -> str:
    """sha256 of what a figure shows: its kind, ``FIGURE_VERSION`` and its data (canonical JSON)."""
    text = json.dumps({"kind": kind, "version": FIGURE_VERSION, "data": data}, sort_keys=True,
                      separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
