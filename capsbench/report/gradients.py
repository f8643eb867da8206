"""Per-layer gradient norms: how much gradient reaches each layer (the paper's vanishing-gradient claim).

Per run (``layer_data``/``layer_figure``): x is the position in the network (backbone, primary
capsules, conv1 ... convN, class capsules), y the L2 norm of the gradient (log scale), one line
per chosen epoch: solid for the layer's weights, dashed for the gradient reaching its input.
Values are the epoch means of ``metrics.jsonl`` (sampled every ``metrics.grad_norm_every`` steps).

Per data set (``depth_data``/``depth_figure``): the weight-gradient norm of the first capsule
layer and of the backbone against depth, one line per method (epoch mean of the latest epoch that
sampled gradients): the geometric mean over seeds with its 95% interval as error bars (a t-interval of
the log10 norms, ``capsbench.intervals``: norms spread over orders of magnitude and the axis is
logarithmic; none for a single seed).

Example::

    with figure_style():
        save_png(layer_figure(layer_data(run, [1, 4])), "gradients.png")
"""

from __future__ import annotations

import math

from capsbench.intervals import geometric_interval
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
        entry = {"name": name, "baseline": line["baseline"], "depth": depths}
        for i, key in enumerate(("primary", "backbone")):
            per_depth = [_geometric([p[i] for p in line["points"][d]]) for d in depths]
            entry[key] = [m for m, _, _ in per_depth]
            entry[key + "_ci95"] = [ci for _, ci, _ in per_depth]
            entry[key + "_seeds"] = [n for _, _, n in per_depth]
        out.append(entry)
    return {"title": title, "lines": out}


def _geometric(values) -> tuple[float | None, list[float] | None, int]:
    """Geometric mean of the positive finite ``values``, the 95% interval of it (from log10), and their count;
    rounded for the figure's data (a log axis shows no zero, so zeros are left out)."""
    mean, interval, n = geometric_interval(values)
    return (None if mean is None else _r(mean)), (None if interval is None else [_r(v) for v in interval]), n


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
            cis = [ci for d, v, ci in zip(line["depth"], line[key], line[key + "_ci95"]) if v is not None]
            err = [[v - ci[0] if ci else 0.0 for (_, v), ci in zip(pts, cis)],
                   [ci[1] - v if ci else 0.0 for (_, v), ci in zip(pts, cis)]]
            seeds = sorted({n for n in line[key + "_seeds"] if n})
            n = f"n={seeds[0]}" if len(seeds) == 1 else f"n={seeds[0]}-{seeds[-1]}"
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=err, marker=marker, color=color, capsize=3,
                        markerfacecolor="white" if line["baseline"] else color,
                        linestyle="--" if line["baseline"] else "-",
                        label=line["name"] + (" (baseline)" if line["baseline"] else "") + f", {n}")
        if any_points:
            ax.set_yscale("log")
            ax.legend(loc="best")
        else:
            ax.text(0.5, 0.5, "no gradient norms recorded", transform=ax.transAxes, ha="center", color="#777777")
        ax.set_title(f"weight gradient of the {what}")
        ax.set_xlabel("depth (stacked ConvCaps layers)")
        ax.set_ylabel("gradient L2 norm (latest epoch with samples, log)\ngeometric mean, 95% CI over seeds")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(data["title"])
    return fig
