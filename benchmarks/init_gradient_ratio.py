"""The gradient ratio rho at initialisation for arms of the remedies screening, before any of them is trained.

    OMP_NUM_THREADS=1 python benchmarks/init_gradient_ratio.py [--arms A,B] [--depths 10,20,30] [--tag TAG]

For each ``sweep.extends`` arm of ``specs/remedies/screening.yaml`` and each depth: the model of that run
(seed 0, training-mode BatchNorm), one backward pass of a class-weighted sum of its output on the first 32
training images of digits 8x8, and ``rho = |dL/d input of conv1| / |dL/d input of the class capsules|``
(``capsbench.metrics.grad_norms.input_gradient_ratio``, the quantity of criterion C in docs/remedies.md). rho
near 1 at depth d says the gradient reaches the bottom of the stack at initialisation; its d-th root is the
factor per stacked layer. Writes ``results/init-gradient-ratio-<tag>.json`` (with the machine) and prints a
Markdown table. A prediction measured before training, never a result of the sweep.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from capsbench import spec
from capsbench.data import build_data
from capsbench.env import environment
from capsbench.io import write_json
from capsbench.metrics.grad_norms import input_gradient_ratio
from capsbench.registry import MODELS

HERE = Path(__file__).resolve().parent
SPEC = HERE.parent / "specs" / "remedies" / "screening.yaml"
# every routing's plain preset in the screening
DEFAULT_ARMS = ("pkg:capsbench_ida_routing/presets/ida.yaml,pkg:capsbench_efficient_capsnet/presets/efficient.yaml,"
                "../protocols/methods/self.yaml,arms/em.yaml,arms/vb.yaml,../protocols/methods/dynamic.yaml")


def ratio_at_init(arm: str, depth: int, images: int = 32) -> float | None:
    (run,) = spec.load(SPEC, [f"sweep.extends=[{arm}]", f"sweep.model.depth=[{depth}]"])
    cfg = run.config
    torch.manual_seed(0)
    data = build_data(cfg.data)
    x = torch.stack([data.train[i][0] for i in range(images)])
    model = MODELS.get(cfg.model.arch)(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels,
                                       image_size=data.image_size).train()
    return input_gradient_ratio(model, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default=DEFAULT_ARMS, help="sweep.extends entries of the screening spec")
    parser.add_argument("--depths", default="10,20,30")
    parser.add_argument("--tag", default="cpu")
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    rows = [{"arm": arm, "depth": d, "rho": ratio_at_init(arm, d)} for arm in args.arms.split(",") for d in depths]
    for row in rows:
        rho = row["rho"]
        row["per_layer"] = None if not rho else rho ** (1.0 / row["depth"])
    out = HERE / "results" / f"init-gradient-ratio-{args.tag}.json"
    write_json(out, {"environment": environment("cpu"), "spec": "specs/remedies/screening.yaml", "results": rows})
    print("| arm | depth | rho at init | per stacked layer |")
    print("|---|--:|--:|--:|")
    for r in rows:
        per = "n/a" if r["per_layer"] is None else f"{r['per_layer']:.3g}"
        rho = "no gradient at the class input" if r["rho"] is None else f"{r['rho']:.3g}"
        print(f"| {r['arm']} | {r['depth']} | {rho} | {per} |")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
