"""Mechanism figure of one run: how each layer's activations and routing evolve over the epochs.

Six panels, x = epoch, one line per capsule layer (colour from input side to output side), from
the ``mechanism`` entry of every ``metrics.jsonl`` line (capsbench/metrics/mechanism.py,
validation epochs):

- median activation (p50) and the low tail (p5, log scale, with the dead threshold);
- fraction of dead (type, position) units;
- coupling entropy over parent types, normalised by ``ln J`` (1 = uniform coupling);
- input dependence of the coupling (std across images / mean coefficient; 0 = none);
- mean pose norm (log scale).

Example::

    with figure_style():
        save_png(mechanism_figure(mechanism_data(run)), "mechanism.png")
"""

from __future__ import annotations

import math

from capsbench.report.style import new_figure

KIND = "mechanism"

PANELS = (
    ("p50", "median activation (p50)", False),
    ("p5", "low tail of activations (p5, log)", True),
    ("dead_unit_fraction", "dead (type, position) units", False),
    ("coefficient_entropy", "coupling entropy / ln J", False),
    ("coefficient_cv_images", "coupling std across images / mean", False),
    ("pose_norm", "mean pose norm (log)", True),
)


def _value(entry: dict, key: str):
    if key in ("p50", "p5"):
        value = (entry.get("activation_percentiles") or {}).get(key)
    elif key == "pose_norm":
        value = (entry.get("pose_norm") or {}).get("mean")
    else:
        value = entry.get(key)
    return None if value is None or not math.isfinite(value) else float(f"{value:.6g}")


def mechanism_data(run, threshold: float = 0.01) -> dict:
    """Per layer (forward order) and panel, the values over the epochs that recorded telemetry."""
    lines = [line for line in run.history if line.get("mechanism")]
    epochs = [line["epoch"] for line in lines]
    layers = [name for name in run.layer_order() if any(name in line["mechanism"] for line in lines)]
    series = {
        key: {name: [_value(line["mechanism"].get(name) or {}, key) for line in lines] for name in layers}
        for key, _, _ in PANELS
    }
    return {"title": run.title(), "epochs": epochs, "layers": layers, "series": series, "threshold": threshold}


def mechanism_figure(data: dict):
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(14, 7.5)
    axes = fig.subplots(2, 3).flatten()
    layers = data["layers"]
    cmap = matplotlib.colormaps["viridis"]
    if not data["epochs"]:
        axes[0].text(0.5, 0.5, "no mechanism telemetry recorded (metrics.mechanism = false?)",
                     transform=axes[0].transAxes, ha="center", color="#777777")  # fmt: skip
    for ax, (key, label, log) in zip(axes, PANELS):
        drawn = False
        for i, name in enumerate(layers):
            pts = [(e, v) for e, v in zip(data["epochs"], data["series"][key][name]) if v is not None]
            if log:
                pts = [(e, v) for e, v in pts if v > 0]
            if pts:
                color = cmap(i / max(len(layers) - 1, 1))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", color=color, label=name)
                drawn = True
        if key == "p5":
            ax.axhline(data["threshold"], color="#D55E00", linestyle=":", label=f"dead threshold {data['threshold']}")
        if log and drawn:
            ax.set_yscale("log")
        ax.set_title(label, fontsize="medium")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if layers:
        axes[0].legend(loc="best", fontsize="x-small", ncol=2)
    name, _, rest = data["title"].partition(": ")
    fig.suptitle(f"{name}: {rest} · mechanism per layer (validation)" if rest else f"{name} · mechanism per layer")
    return fig
