"""EM's long-cpu arms on the compiled CPU kernel against the reference path: CPU time of one training step.

    OMP_NUM_THREADS=1 python benchmarks/em_variants_cost.py [--depths 6,10] [--steps 3] [--tag TAG]

For EM and each of its screening arms in ``specs/long/screening.yaml`` (the uniform control, yl-1993's
renormalised M-step, SR-CapsNet's R = 1 start, the fixed lambda) and each depth, ``capsbench bench`` runs one
warm-up step and ``--steps`` measured training steps twice, in fresh processes: as the spec says
(``routing_impl: auto``, which takes the compiled kernel where it serves the arm) and with
``model.routing_impl=reference``. Rows as ``remedies_depth_cost.py``'s (CPU time of the single-threaded
process, robust to a shared machine's load; the backend each layer ran). Writes
``results/em-variants-cost-<tag>.json`` and prints a Markdown table with the speed-up.
"""

from __future__ import annotations

from pathlib import Path

from remedies_depth_cost import arguments, machine, measure

from capsbench.env import environment
from capsbench.io import write_json

HERE = Path(__file__).resolve().parent
SPEC = HERE.parent / "specs" / "long" / "screening.yaml"
ARMS = ["../protocols/methods/em.yaml", "arms/em_uniform.yaml", "arms/em_yl1993_renormalise.yaml",
        "arms/em_sr_initial_r1.yaml", "arms/em_fixed_lambda.yaml"]  # fmt: skip
IMPLS = {"auto": (), "reference": ("model.routing_impl=reference",)}


def main() -> None:
    args = arguments(__doc__, "6", ARMS, 3)
    rows = [
        {**row, "impl": impl}
        for arm in args.arms.split(",")
        for impl, overrides in IMPLS.items()
        for row in measure(SPEC, arm, args.depths, args.steps, overrides)
    ]
    out = HERE / "results" / f"em-variants-cost-{args.tag}.json"
    write_json(out, {"machine": machine(), "environment": environment("cpu"), "spec": "specs/long/screening.yaml",
                     "steps": args.steps, "results": rows})  # fmt: skip
    print("| arm | depth | auto: backend | auto CPU s / step | reference CPU s / step | speed-up |")
    print("|---|--:|---|--:|--:|--:|")
    for auto in (r for r in rows if r["impl"] == "auto"):
        key = (auto["arm"], auto["depth"])
        ref = next(r for r in rows if r["impl"] == "reference" and (r["arm"], r["depth"]) == key)
        backend = sorted(set((auto.get("routing_backend") or {}).values()) - {None}) or ["pytorch"]
        print(f"| {auto['arm']} | {auto['depth']} | {', '.join(map(str, backend))} | {auto['cpu_s_per_step']:.2f} | "
              f"{ref['cpu_s_per_step']:.2f} | {ref['cpu_s_per_step'] / auto['cpu_s_per_step']:.1f}x |")  # fmt: skip
    print(f"written: {out}")


if __name__ == "__main__":
    main()
