"""The paper's Figures 6-7: one circle per capsule type, one row per capsule layer, per epoch.

Each circle is shaded by the type's mean activation over a whole validation (or test) epoch
(paper eq. 12). The colour scale runs from 0 to 1 with a square-root stretch, so the small
activations where capsules die stay distinguishable; the dead threshold (eq. 13) is marked on
the colour bar, and dead types get a red ring. Panels side by side are epochs of one run.

Example::

    data = activation_data(run, epochs=[1, 4], split="val")    # run: capsbench.report.rundir.RunDir
    with figure_style():
        save_png(activation_figure(data), "activations.png")
"""

from __future__ import annotations

from capsbench.report.style import new_figure

KIND = "activations"
CMAP = "viridis"
DEAD_COLOR = "#E00000"


def activation_data(run, epochs: list[int], split: str = "val") -> dict:
    """Plot data of the epochs ``epochs`` of ``run`` (a ``RunDir``)."""
    acts = run.activations(split)
    panels = []
    for epoch in epochs:
        layers = acts[epoch]
        order = [name for name in run.layer_order() if name in layers]
        order += sorted(set(layers) - set(order))
        line = run.history_by_epoch().get(epoch, {})
        acc = line.get(f"{split}_accuracy")
        panels.append({
            "epoch": epoch,
            "accuracy": None if acc is None else round(float(acc), 6),
            "layers": [[name, [round(float(v), 6) for v in layers[name]]] for name in order],
        })
    return {"title": run.title(), "split": split, "threshold": run.dead_threshold(), "panels": panels}


def activation_figure(data: dict):
    import numpy as np
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import PowerNorm

    panels = data["panels"]
    width_types = max((len(v) for p in panels for _, v in p["layers"]), default=1)
    rows = max((len(p["layers"]) for p in panels), default=1)
    fig = new_figure(max(4.8, 1.6 + 0.42 * width_types) * len(panels) + 1.2, 1.9 + 0.46 * rows)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    norm = PowerNorm(0.5, vmin=0.0, vmax=1.0)
    threshold = data["threshold"]
    split = "validation" if data["split"] == "val" else data["split"]
    for ax, panel in zip(axes, panels):
        names = [name for name, _ in panel["layers"]]
        for row, (_, values) in enumerate(panel["layers"]):
            y = len(names) - 1 - row  # first layer on top
            xs = np.arange(len(values))
            vals = np.clip(np.array([np.nan if v is None else v for v in values], dtype=float), 0.0, 1.0)
            ax.scatter(xs, np.full(len(values), y), c=vals, cmap=CMAP, norm=norm, s=150, edgecolors="#333333",
                       linewidths=0.6, zorder=2)
            dead = [x for x, v in zip(xs, values) if v is not None and v <= threshold]
            if dead:
                ax.scatter(dead, np.full(len(dead), y), s=260, facecolors="none", edgecolors=DEAD_COLOR,
                           linewidths=1.8, zorder=3)
        labels = []
        for name, values in panel["layers"]:
            n_dead = sum(v is not None and v <= threshold for v in values)
            labels.append(f"{name}  ({n_dead}/{len(values)} dead)")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(list(reversed(labels)))
        ax.set_xticks(range(width_types))
        ax.set_xlim(-0.7, width_types - 0.3)
        ax.set_ylim(-0.7, len(names) - 0.3)
        ax.set_xlabel("capsule type")
        ax.grid(False)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        acc = "" if panel["accuracy"] is None else f", {split} accuracy {100 * panel['accuracy']:.1f}%"
        ax.set_title(f"epoch {panel['epoch']}{acc}")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), ax=list(axes), shrink=0.9, pad=0.02)
    bar.set_label(f"mean activation over the {split} epoch (eq. 12)")
    bar.set_ticks([0, threshold, 0.1, 0.25, 0.5, 0.75, 1.0])
    bar.set_ticklabels(["0", f"dead ≤ {threshold:g}", "0.1", "0.25", "0.5", "0.75", "1"])
    bar.ax.axhline(threshold, color=DEAD_COLOR, linewidth=2)
    fig.suptitle(f"{data['title']}\nmean capsule activation per type; red ring = dead (≤ {threshold:g})")
    return fig
