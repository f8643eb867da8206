"""Mechanism figure of one run: how each layer's activations and routing evolve over the epochs.

Six panels, x = epoch, one line per capsule layer (colour from input side to output side), from
the ``mechanism`` entry of every ``metrics.jsonl`` line (capsbench/metrics/mechanism.py,
validation epochs):

- median activation (p50) and the low tail (p5, log scale, with the dead threshold);
- fraction of dead (type, position) units;
- coupling entropy over parent types, normalised by ``ln J`` (1 = uniform coupling);
- input dependence of the coupling (std across images / mean coefficient; 0 = none);
- mean pose norm (log scale).

A second figure (``terms_data``/``terms_figure``), for routings that report their activation terms
(EM, VB): one panel per term (logit, margin, cost, mass, ``beta_a``, ...), the mean over a layer's
types per epoch with the range over types shaded, so a dying type's cause can be read off.

Example::

    with figure_style():
        save_png(mechanism_figure(mechanism_data(run)), "mechanism.png")
        save_png(terms_figure(terms_data(run)), "terms.png")
"""

from __future__ import annotations

import math

from capsbench.report.style import new_figure

KIND = "mechanism"
# activation terms in the order they explain an activation (first: closest to it); at most six drawn
TERMS = ("logit", "logit_bn", "margin", "cost", "mass", "beta_a", "entropy", "weight", "beta_u")

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


def terms_data(run) -> dict:
    """Per term and layer, ``(mean, min, max)`` over the layer's types at every epoch that has terms."""
    lines = [line for line in run.history if line.get("mechanism")]
    layers = [n for n in run.layer_order() if any((line["mechanism"].get(n) or {}).get("terms") for line in lines)]
    present = {k for line in lines for n in layers for k in ((line["mechanism"].get(n) or {}).get("terms") or {})}
    terms = [k for k in TERMS if k in present][:6]
    series: dict = {k: {n: [] for n in layers} for k in terms}
    for line in lines:
        for name in layers:
            values = (line["mechanism"].get(name) or {}).get("terms") or {}
            for key in terms:
                v = values.get(key)
                v = [v] if isinstance(v, (int, float)) else [x for x in (v or []) if x is not None and math.isfinite(x)]
                stat = (math.fsum(v) / len(v), min(v), max(v)) if v else None
                series[key][name].append((line["epoch"], stat))
    return {"title": run.title(), "layers": layers, "terms": terms, "series": series}


def terms_figure(data: dict):
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(14, 7.5)
    axes = fig.subplots(2, 3).flatten()
    cmap = matplotlib.colormaps["viridis"]
    layers = data["layers"]
    for ax, key in zip(axes, data["terms"]):
        for i, name in enumerate(layers):
            pts = [(e, stat) for e, stat in data["series"][key][name] if stat is not None]
            if not pts:
                continue
            color = cmap(i / max(len(layers) - 1, 1))
            epochs = [e for e, _ in pts]
            ax.plot(epochs, [stat[0] for _, stat in pts], marker=".", color=color, label=name)
            low, high = [stat[1] for _, stat in pts], [stat[2] for _, stat in pts]
            ax.fill_between(epochs, low, high, color=color, alpha=0.12, linewidth=0)
        ax.set_title(f"{key} (mean over types, range shaded)", fontsize="medium")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(data["terms"]):]:
        ax.set_visible(False)
    if data["terms"]:
        axes[0].legend(loc="best", fontsize="x-small", ncol=2)
    name, _, rest = data["title"].partition(": ")
    fig.suptitle(f"{name}: {rest} · activation terms per layer (validation)" if rest else f"{name} · activation terms")
    return fig
