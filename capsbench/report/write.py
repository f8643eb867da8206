"""``capsbench report``: figures and an HTML page from saved run directories, without re-training.

Writes, under ``out`` (default ``<first path>/report``)::

    index.html                                   links every figure
    <protocol>-v<version>/<dataset>-depth.png     Figures 1-5: accuracy and dead capsules vs depth
    <protocol>-v<version>/<dataset>-gradients.png weight-gradient norms of the first layers vs depth
    runs/<run>/activations[-N].png               Figures 6-7: activation grid of the chosen epochs
    runs/<run>/gradients.png                     per-layer gradient norms of the chosen epochs
    runs/<run>/mechanism.png                     per-layer activation percentiles, dead units, coupling
                                                 entropy and input dependence, pose norms over the epochs
    runs/<run>/terms.png                         EM/VB: the activation's terms per layer over the epochs

Example::

    written = write_report([Path("runs/quickstart")], Path("report"), epochs="first,last")
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from pathlib import Path

from capsbench.errors import UserError
from capsbench.io import write_text
from capsbench.report import activations, depth, gradients, mechanism
from capsbench.report.html import esc, image, page, table
from capsbench.report.rundir import RunDir, parse_epochs
from capsbench.report.style import figure_style, save_png

PANELS_PER_IMAGE = 4  # activation grids side by side in one PNG


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt=".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _run_names(runs: list[RunDir]) -> dict[Path, str]:
    """A short unique folder name per run: its path below the runs' common parent."""
    paths = [r.path.resolve() for r in runs]
    if len(paths) == 1:
        return {runs[0].path: paths[0].name}
    common = Path(os.path.commonpath(paths))
    return {r.path: p.relative_to(common).as_posix() for r, p in zip(runs, paths)}


def write_report(paths: list[Path], out: Path | None = None, epochs: str = "first,last", split: str = "val",
                 log=None) -> list[Path]:
    """Render every figure of the runs at or below ``paths``; return the files written."""
    from capsbench.results.entry import make_entry
    from capsbench.results.scores import aggregate
    from capsbench.results.store import find_runs

    log = log or (lambda line: print(line, file=sys.stderr))
    tokens = parse_epochs(epochs)
    if split not in ("val", "test"):
        raise UserError(f"--split: expected val or test, got '{split}'")
    finished, unfinished = find_runs(paths)
    runs = [RunDir(p) for p in sorted(finished + unfinished)]
    out = Path(out) if out is not None else Path(paths[0]) / "report"
    names = _run_names(runs)
    written: list[Path] = []
    body = ["<h1>capsbench report</h1>",
            f"<p class=\"note\">{len(runs)} run(s) from {esc(', '.join(str(p) for p in paths))}. "
            "Figures are drawn from the saved run directories (record.json, metrics.jsonl, activations.npz).</p>"]

    # --- per data set: Figures 1-5 and gradient norms against depth -------------------------
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for run in runs:
        if run.record is not None:
            entry = make_entry(run.record)
            groups[(str(entry["protocol"]), str(entry["protocol_version"]))].append((entry, run))
    with figure_style():
        for (protocol, version), items in sorted(groups.items()):
            tables = aggregate([e for e, _ in items])
            folder = f"{protocol}-v{version}"
            for dataset, tab in tables.items():
                title = f"{dataset} · protocol {protocol} v{version}"
                body.append(f"<h2>{esc(title)}</h2>")
                fig_path = out / folder / f"{dataset}-depth.png"
                save_png(depth.depth_figure(depth.depth_data(tab, title)), fig_path)
                written.append(fig_path)
                body.append(image(fig_path.relative_to(out).as_posix(), f"accuracy and dead capsules, {title}"))
                rows = _gradient_rows([(e, r) for e, r in items if e["dataset"] == dataset], tab)
                grad_path = out / folder / f"{dataset}-gradients.png"
                save_png(gradients.depth_figure(gradients.depth_data(rows, f"{title}: gradient norms")), grad_path)
                written.append(grad_path)
                body.append(image(grad_path.relative_to(out).as_posix(), f"gradient norms vs depth, {title}"))
                body.append(_runs_table([(e, r) for e, r in items if e["dataset"] == dataset], names))

        # --- per run: Figures 6-7 and per-layer gradient norms ------------------------------
        body.append("<h2>Runs</h2>")
        for run in runs:
            name = names[run.path]
            body.append(f"<h3 id=\"{esc(name)}\">{esc(run.title())}</h3>")
            chosen, missing = run.select_epochs(tokens, split)
            if missing:
                log(f"warning: {run.path}: no {split} epoch {', '.join(map(str, missing))} in activations.npz, skipped")
            if not chosen:
                body.append(f"<p class=\"note\">no {split} activations saved in this run</p>")
                continue
            folder = out / "runs" / name
            chunks = [chosen[i:i + PANELS_PER_IMAGE] for i in range(0, len(chosen), PANELS_PER_IMAGE)]
            for i, chunk in enumerate(chunks):
                suffix = "" if len(chunks) == 1 else f"-{i + 1}"
                path = folder / f"activations{suffix}.png"
                save_png(activations.activation_figure(activations.activation_data(run, chunk, split)), path)
                written.append(path)
                body.append(image(path.relative_to(out).as_posix(), f"capsule activations, epochs {chunk}"))
            path = folder / "gradients.png"
            save_png(gradients.layer_figure(gradients.layer_data(run, chosen)), path)
            written.append(path)
            body.append(image(path.relative_to(out).as_posix(), "per-layer gradient norms"))
            if any(line.get("mechanism") for line in run.history):
                path = folder / "mechanism.png"
                threshold = (run.config().get("metrics") or {}).get("dead_threshold", 0.01)
                save_png(mechanism.mechanism_figure(mechanism.mechanism_data(run, threshold)), path)
                written.append(path)
                body.append(image(path.relative_to(out).as_posix(), "mechanism per layer over the epochs"))
                terms = mechanism.terms_data(run)
                if terms["terms"]:
                    path = folder / "terms.png"
                    save_png(mechanism.terms_figure(terms), path)
                    written.append(path)
                    body.append(image(path.relative_to(out).as_posix(), "activation terms per layer over the epochs"))
    index = out / "index.html"
    write_text(index, page("capsbench report", body))
    written.append(index)
    return written


def _gradient_rows(items, tab) -> list[dict]:
    names = {(row["method"], row["variant"]): row["name"] for row in tab["rows"]}
    rows = []
    for entry, run in items:
        if entry["status"] != "ok":
            continue
        sampled = [line["grad_norms"] for line in run.history if line.get("grad_norms")]
        norms = (sampled[-1] if sampled else None) or entry["metrics"]["grad_norms"] or {}
        order = entry["metrics"]["layer_order"]
        first = (norms.get(order[0]) or {}).get("weight") if order else None
        backbone = (norms.get("backbone") or {}).get("weight")
        rows.append({"name": names[(entry["method"], entry["variant"])], "baseline": entry["baseline"],
                     "depth": entry["depth"], "primary": first, "backbone": backbone})
    return rows


def _runs_table(items, names) -> str:
    rows, classes = [], []
    for entry, run in sorted(items, key=lambda x: (x[0]["method"], x[0]["depth"], x[0]["seed"])):
        m = entry["metrics"]
        dead = " · ".join(f"{n} {m['layers'][n]['dead_count']}/{len(m['layers'][n]['types'])}"
                          for n in m["layer_order"] if n in m["layers"])
        status = entry["status"] + (f"@{entry['diverged_epoch']}" if entry["diverged_epoch"] else "")
        rows.append([names[run.path], entry["method"] + (" (baseline)" if entry["baseline"] else ""), entry["depth"],
                     entry["seed"], status, _pct(m["test_accuracy"]), _num(m["avg_dead_conv"]), dead or "n/a"])
        classes.append("baseline" if entry["baseline"] else ("failed" if entry["status"] != "ok" else None))
    return table(["run", "method", "depth", "seed", "status", "test accuracy", "avg dead (ConvCaps)",
                  "dead types per layer (test)"], rows, classes)
