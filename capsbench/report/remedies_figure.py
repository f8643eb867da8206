"""The remedies view's figure: accuracy and dead capsules against depth in small multiples, one row per routing.

One panel pair for all routing x remedy lines (30 and more on long-cpu) is unreadable: colours repeat and the legend
outgrows the plot. Here each routing gets its own row (test accuracy left, dead capsule types per stacked layer
right, as the paper's depth figures and ``capsbench.report.depth``), its lines labelled by remedy alone, its legend
beside the row; the matched-depth baselines (CNN, ViT) are drawn dashed in every accuracy panel, so each routing's
remedies read against the same reference. Lines, intervals and labels are ``depth``'s (``plot_line``).

Example::

    data = figure_data(view["digits"], title="digits · remedies")   # remedies_view.remedies_view(...)
    with figure_style():
        save_png(remedies_figure(data), "digits-remedies.png")
"""

from __future__ import annotations

from capsbench.report.depth import depth_data, line_label, plot_line
from capsbench.report.remedies_view import PLAIN
from capsbench.report.style import COLORS, MARKERS, line_styles, new_figure

KIND = "remedies"
ROW_HEIGHT = 2.5  # inches per routing: room for a legend of about ten remedies
PLAIN_COLOUR = "#000000"
# in the plot data, so a change of how the figure is drawn re-renders it (leaderboard build redraws a PNG only
# when its data's hash changes)
DRAWING = 2


def figure_data(view_tab: dict, title: str) -> dict:
    """Plain plot data (what the figure shows and its hash covers): per routing its lines, and the baselines."""
    base = depth_data(view_tab, title)
    lines = dict(zip((row["name"] for row in view_tab["rows"]), base.pop("lines")))
    groups: dict[str, list[dict]] = {}
    baselines = []
    for row in view_tab["rows"]:
        line = {**lines[row["name"]], "remedy": row["remedy"]}
        if row["baseline"]:
            baselines.append(line)
        else:
            groups.setdefault(row["routing"], []).append(line)
    return {**base, "drawing": DRAWING, "groups": [{"routing": r, "lines": g} for r, g in groups.items()],
            "baselines": baselines}


def _seeds(line: dict) -> str:
    """The label's seed count, as ``depth.line_label`` writes it (", n=3")."""
    return line_label(line).rsplit(",", 1)[-1]


def _styles(remedies: list[str]) -> dict[str, tuple[str, str]]:
    """Colours restart per routing; the plain preset is black, the reference every remedy is read against."""
    plain = {r for r in remedies if r in PLAIN}
    others = sorted(set(remedies) - plain)
    palette = [c for c in COLORS if c != PLAIN_COLOUR]
    styles = {r: (palette[i % len(palette)], MARKERS[(i + 1) % len(MARKERS)]) for i, r in enumerate(others)}
    return {**styles, **{r: (PLAIN_COLOUR, MARKERS[0]) for r in plain}}


def remedies_figure(data: dict):
    from matplotlib.ticker import MaxNLocator

    groups = data["groups"]
    fig = new_figure(12, 1.0 + ROW_HEIGHT * max(1, len(groups)))
    axes = fig.subplots(max(1, len(groups)), 2, squeeze=False, sharex=True)
    depths = sorted({d for g in groups for line in g["lines"] for d in line["depth"]})
    top = data.get("conv_types")
    baseline_styles = line_styles(line["name"] for line in data["baselines"])
    for (acc_ax, dead_ax), group in zip(axes, groups):
        styles = _styles([line["remedy"] for line in group["lines"]])
        for i, line in enumerate(group["lines"]):
            dodge = 0.06 * (i - (len(group["lines"]) - 1) / 2)
            label = f"{line['remedy']},{_seeds(line)}"
            plot_line(acc_ax, line, styles[line["remedy"]], dodge, "accuracy", 100.0, label=label)
            plot_line(dead_ax, line, styles[line["remedy"]], dodge, "dead", 1.0, label=label)
        for line in data["baselines"]:  # grey, dashed and hollow: the same reference in every row
            plot_line(acc_ax, line, ("#888888", baseline_styles[line["name"]][1]), 0.0, "accuracy", 100.0)
        if data["chance"] is not None:
            acc_ax.axhline(100 * data["chance"], color="black", linestyle=":", linewidth=1.0,
                           label=f"chance ({100 * data['chance']:.0f}%)")
        if top:
            dead_ax.axhline(top, color="black", linestyle=":", linewidth=1.0)  # every type dead
            dead_ax.set_ylim(-0.5, top + 1)
        acc_ax.set_ylim(0, 100)
        acc_ax.set_ylabel(f"{group['routing']}\ntest accuracy (%)", fontweight="bold")
        dead_ax.set_ylabel("dead types / layer")
        for ax in (acc_ax, dead_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if depths:
                ax.set_xlim(min(depths) - 0.5, max(depths) + 0.5)
        # one legend per row, beside it: the accuracy panel's entries (remedies, baselines, chance)
        dead_ax.legend(*acc_ax.get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.02, 0.5),
                       fontsize=7, frameon=False)
    threshold = data.get("dead_threshold")
    axes[0][0].set_title("Test accuracy (mean, 95% CI)")
    axes[0][1].set_title("Dead types per stacked layer" + (f" (activation ≤ {threshold:g})"
                                                           if threshold is not None else ""))
    xlabel = "depth (stacked ConvCaps layers; baselines: their blocks)"
    axes[-1][0].set_xlabel(xlabel)
    axes[-1][1].set_xlabel(xlabel)
    fig.suptitle(data["title"])
    return fig
