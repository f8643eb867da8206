"""Per-layer gradient norms: how much gradient reaches each layer (the paper's vanishing-gradient claim).

Per run (``layer_data``/``layer_figure``): x is the position in the network (backbone, primary
capsules, conv1 ... convN, class capsules), y the L2 norm of the gradient (log scale), one line
per chosen epoch: solid for the layer's weights, dashed for the gradient reaching its input.
Values are the epoch means of ``metrics.jsonl`` (sampled every ``metrics.grad_norm_every`` steps).

Per data set (``depth_data``/``depth_figure``): the weight-gradient norm of the first capsule
layer and of the backbone against depth, one line per method (mean over seeds, epoch mean of the
latest epoch that sampled gradients).

Example::

    with figure_style():
        save_png(layer_figure(layer_data(run, [1, 4])), "gradients.png")
"""

from __future__ import annotations

import math

from capsbench.report.style import COLORS, MARKERS, line_styles, new_figure

KIND_LAYERS = "gradients"
KIND_DEPTH = "gradients-depth"


def _r(x):
    return None if x is None or not math.isfinite(x) or x <= 0 else float(f"{x:.6g}")


def layer_data(run, epochs: list[int]) -> dict:
    history = run.history_by_epoch()
    order = ["backbone", *run.layer_order()]
    lines = []
    for epoch in epochs:
        norms = (history.get(epoch) or {}).get("grad_norms") or {}
        lines.append({
            "epoch": epoch,
            "weight": [_r((norms.get(name) or {}).get("weight")) for name in order],
            "input": [_r((norms.get(name) or {}).get("input")) for name in order],
        })
    return {"title": run.title(), "layers": order, "lines": lines}


def layer_figure(data: dict):
    layers = data["layers"]
    fig = new_figure(max(6.0, 1.2 + 0.55 * len(layers)), 4.4)
    ax = fig.subplots()
    xs = list(range(len(layers)))
    plotted = False
    for i, line in enumerate(data["lines"]):
        color = COLORS[i % len(COLORS)]
        for key, style, what in (("weight", "-", "weights"), ("input", "--", "input")):
            pts = [(x, v) for x, v in zip(xs, line[key]) if v is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=style, marker=MARKERS[i % len(MARKERS)],
                        color=color, label=f"epoch {line['epoch']}: gradient w.r.t. {what}")
                plotted = True
    if plotted:
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no gradient norms recorded (metrics.grad_norm_every = 0?)", transform=ax.transAxes,
                ha="center", color="#777777")
    ax.set_xticks(xs)
    ax.set_xticklabels(layers, rotation=45 if len(layers) > 8 else 0, ha="right" if len(layers) > 8 else "center")
    ax.set_xlabel("layer (input side on the left)")
    ax.set_ylabel("gradient L2 norm (epoch mean, log scale)")
    # the run title is long (folder name, method, data set): split it so a narrow figure keeps all of it
    name, _, rest = data["title"].partition(": ")
    ax.set_title(f"{name}\n{rest}: per-layer gradient norms" if rest else f"{name}\nper-layer gradient norms",
                 fontsize="medium")
    if plotted:
        ax.legend(loc="best")
    return fig


def depth_data(rows: list[dict], title: str) -> dict:
    """``rows``: ``{"name", "baseline", "depth", "primary", "backbone"}`` per run (last-epoch weight norms)."""
    lines = {}
    for r in rows:
        line = lines.setdefault(r["name"], {"name": r["name"], "baseline": r["baseline"], "points": {}})
        line["points"].setdefault(r["depth"], []).append((r["primary"], r["backbone"]))
    out = []
    for name in sorted(lines):
        line = lines[name]
        depths = sorted(line["points"])
        def mean(i, d, line=line):
            vals = sorted(p[i] for p in line["points"][d] if p[i] is not None)
            return _r(math.fsum(vals) / len(vals)) if vals else None
        out.append({"name": name, "baseline": line["baseline"], "depth": depths,
                    "primary": [mean(0, d) for d in depths], "backbone": [mean(1, d) for d in depths]})
    return {"title": title, "lines": out}


def depth_figure(data: dict):
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(11, 4.4)
    axes = fig.subplots(1, 2)
    styles = line_styles(line["name"] for line in data["lines"])
    for ax, key, what in zip(axes, ("primary", "backbone"), ("first capsule layer", "backbone (conv stem)")):
        any_points = False
        for line in data["lines"]:
            pts = [(d, v) for d, v in zip(line["depth"], line[key]) if v is not None]
            if not pts:
                continue
            any_points = True
            color, marker = styles[line["name"]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color,
                    markerfacecolor="white" if line["baseline"] else color,
                    linestyle="--" if line["baseline"] else "-",
                    label=line["name"] + (" (baseline)" if line["baseline"] else ""))
        if any_points:
            ax.set_yscale("log")
            ax.legend(loc="best")
        else:
            ax.text(0.5, 0.5, "no gradient norms recorded", transform=ax.transAxes, ha="center", color="#777777")
        ax.set_title(f"weight gradient of the {what}")
        ax.set_xlabel("depth (stacked ConvCaps layers)")
        ax.set_ylabel("gradient L2 norm (latest epoch with samples, log)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(data["title"])
    return fig
