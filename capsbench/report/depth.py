"""The paper's Figures 1-5: test accuracy and dead capsules against depth, one line per method.

Left panel: mean test accuracy over seeds with its 95% t-interval as error bars
(``capsbench.intervals``; none for a single seed),
chance (1/classes) as a dotted line, and a red ``x`` under each depth where runs failed
(diverged, out of memory, crashed) with how many. Right panel: the paper's "average number
of dead capsules": dead capsule types per stacked ConvCaps layer, mean over seeds (95% interval), or
another count of types per layer with its own ``dead_title``/``dead_ylabel`` in the data. Baselines
(models without capsules) are dashed, hollow and labelled "(baseline)".

Example::

    table = aggregate(entries)["digits"]               # capsbench.results.scores
    data = depth_data(table, title="digits (quickstart v1)")
    with figure_style():
        save_png(depth_figure(data), "digits.png")
"""

from __future__ import annotations

from capsbench.report.style import line_styles, new_figure

KIND = "depth"


def _r(x):
    return None if x is None else round(float(x), 6)


def _interval(stat: dict):
    return None if not stat.get("ci95") else [_r(v) for v in stat["ci95"]]


def depth_data(table: dict, title: str) -> dict:
    """Plain, rounded plot data of one data set's rows (what the figure shows, and what its hash covers)."""
    lines = []
    for row in table["rows"]:
        d = row["depths"]
        lines.append({
            "name": row["name"],
            "baseline": row["baseline"],
            "depth": [x["depth"] for x in d],
            "accuracy": [_r(x["accuracy"]["mean"]) for x in d],
            "accuracy_ci95": [_interval(x["accuracy"]) for x in d],
            "dead": [_r(x["avg_dead_conv"]["mean"]) for x in d],
            "dead_ci95": [_interval(x["avg_dead_conv"]) for x in d],
            "seeds": [x["ok"] for x in d],
            "failed": [x["runs"] - x["ok"] for x in d],
        })
    return {
        "title": title,
        "chance": _r(table["chance"]),
        "num_classes": table["num_classes"],
        "conv_types": table.get("conv_types"),
        "dead_threshold": table.get("dead_threshold"),
        "lines": lines,
    }


def line_label(line: dict) -> str:
    seeds = sorted(set(n for n in line["seeds"] if n))
    n = f"n={seeds[0]}" if len(seeds) == 1 else (f"n={seeds[0]}-{seeds[-1]}" if seeds else "no finished runs")
    return f"{line['name']}{' (baseline)' if line['baseline'] else ''}, {n}"


def plot_line(ax, line: dict, style: tuple[str, str], dodge: float, key: str, scale: float,
              label: str | None = None) -> None:
    """One line of ``depth_data`` on ``ax``: ``key`` (accuracy or dead) x ``scale``, its interval as error bars."""
    points = [(d, v, ci) for d, v, ci in zip(line["depth"], line[key], line[key + "_ci95"]) if v is not None]
    if not points:
        return
    xs = [p[0] + dodge for p in points]  # a small sideways shift keeps equal values of several methods visible
    ys = [p[1] * scale for p in points]
    err = [[(p[1] - p[2][0]) * scale if p[2] else 0.0 for p in points],
           [(p[2][1] - p[1]) * scale if p[2] else 0.0 for p in points]]
    color, marker = style
    ax.errorbar(
        xs, ys, yerr=err, color=color, marker=marker, markersize=5, capsize=3, linewidth=1.6,
        linestyle="--" if line["baseline"] else "-", markerfacecolor="white" if line["baseline"] else color,
        label=line_label(line) if label is None else label,
    )


def depth_figure(data: dict):
    """The two-panel figure of ``depth_data``."""
    from matplotlib.ticker import MaxNLocator

    lines = data["lines"]
    fig = new_figure(11, 4.6)
    acc_ax, dead_ax = fig.subplots(1, 2)
    depths = sorted({d for line in lines for d in line["depth"]})
    styles = line_styles(line["name"] for line in lines)
    for i, line in enumerate(lines):
        dodge = 0.05 * (i - (len(lines) - 1) / 2)
        plot_line(acc_ax, line, styles[line["name"]], dodge, "accuracy", 100.0)
        plot_line(dead_ax, line, styles[line["name"]], dodge, "dead", 1.0)
    if data["chance"] is not None:
        acc_ax.axhline(100 * data["chance"], color="black", linestyle=":", linewidth=1.2,
                       label=f"chance (1/{data['num_classes']} = {100 * data['chance']:.0f}%)")
    failed = {}
    for line in lines:
        for d, n in zip(line["depth"], line["failed"]):
            failed[d] = failed.get(d, 0) + n
    shown = False
    for d in depths:
        if failed.get(d):
            acc_ax.plot([d], [2], marker="x", color="#C00000", markersize=9, markeredgewidth=2, linestyle="none",
                        label=None if shown else "failed runs (diverged / OOM / crashed)")
            acc_ax.annotate(str(failed[d]), (d, 2), textcoords="offset points", xytext=(6, 2), color="#C00000",
                            fontsize=8)
            shown = True
    acc_ax.set_ylim(0, 100)
    acc_ax.set_ylabel("test accuracy (%), mean and 95% CI over seeds")
    acc_ax.set_title("Test accuracy")
    threshold = data.get("dead_threshold")
    # another per-layer count of capsule types may take the right panel (the long protocol's dying types)
    dead_ax.set_ylabel(data.get("dead_ylabel") or "dead capsule types per ConvCaps layer, mean")
    dead_ax.set_title(data.get("dead_title") or (f"Average dead capsules (mean activation ≤ {threshold:g})"
                                                 if threshold is not None
                                                 else "Average dead capsules (mean activation ≤ threshold)"))
    top = data.get("conv_types")
    if top:
        dead_ax.axhline(top, color="black", linestyle=":", linewidth=1.2, label=f"all {top} types dead")
        dead_ax.set_ylim(-0.3, top + 0.8)
    else:
        dead_ax.set_ylim(bottom=-0.3)
    xlabel = "depth (stacked ConvCaps layers between primary and class capsules)"
    if any(line["baseline"] for line in lines):
        xlabel += "\nbaselines: their own depth (e.g. residual blocks)"
    for ax in (acc_ax, dead_ax):
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if depths:
            ax.set_xlim(min(depths) - 0.4, max(depths) + 0.4)
    if not any(v is not None for line in lines for v in line["dead"]):
        dead_ax.text(0.5, 0.5, "no ConvCaps layers in these runs", transform=dead_ax.transAxes, ha="center",
                     color="#777777")
    handles, labels = acc_ax.get_legend_handles_labels()
    h2, l2 = dead_ax.get_legend_handles_labels()
    for h, lab in zip(h2, l2):
        if lab.startswith("all "):
            handles.append(h)
            labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, max(1, len(labels))), frameon=False)
    fig.suptitle(data["title"])
    return fig
