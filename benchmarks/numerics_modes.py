"""Numerics modes: the CPU cost of ``numerics: portable`` and whether its bits depend on the CPU code path.

For each routing (ci protocol, depth 2, seed 0) trains the same run in four processes:

- ``native`` with the best kernels for this CPU, and ``native`` with ATen, MKL and oneDNN limited to
  AVX2 (what an AVX2-only x86 CPU would run): when their metrics differ, native results depend on the CPU;
- ``portable``, and ``portable`` with MKL limited to AVX2 (``MKL_ENABLE_INSTRUCTIONS``) and oneDNN
  to AVX2 (``ONEDNN_MAX_CPU_ISA``): their metrics must be bit-identical.

Cost: user+system CPU seconds of each whole process (one thread), which a loaded machine inflates
far less than wall time. Writes ``benchmarks/results/numerics-modes.json`` with the machine.

    PYTHONPATH=. python benchmarks/numerics_modes.py [routing ...]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {
    "native": ("native", {}),
    "native-avx2-cpu": ("native", {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                                   "ONEDNN_MAX_CPU_ISA": "AVX2"}),
    "portable": ("portable", {}),
    "portable-isa-avx2": ("portable", {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
}


def run(routing: str, variant: str, out: Path) -> dict:
    mode, extra = VARIANTS[variant]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "capsbench", "run", "specs/ci/routings.yaml", f"model.routing={routing}",
                    "model.depth=2", "seed=0", f"numerics={mode}", "--out", str(out / variant), "--quiet"],
                   cwd=REPO, env=env, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    record = json.loads(next((out / variant).rglob("record.json")).read_text())
    m = record["metrics"]
    return {"cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
            "numerics": record["environment"]["numerics"],
            "result": {"test_accuracy": m["test_accuracy"], "test_loss": m["test_loss"],
                       "val_accuracy": m["val_accuracy"], "grad_norms": m["grad_norms"]}}


def main(routings: list[str]) -> None:
    sys.path.insert(0, str(REPO))
    from capsbench.env import environment

    rows = []
    for routing in routings:
        with tempfile.TemporaryDirectory() as tmp:
            got = {v: run(routing, v, Path(tmp) / routing) for v in VARIANTS}
        row = {"routing": routing, "cpu_s": {v: g["cpu_s"] for v, g in got.items()},
               "native_differs_on_an_avx2_cpu": got["native"]["result"] != got["native-avx2-cpu"]["result"],
               "portable_identical_across_isa_limits": got["portable"]["result"] == got["portable-isa-avx2"]["result"],
               "test_loss": {v: g["result"]["test_loss"] for v, g in got.items()}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = REPO / "benchmarks" / "results" / "numerics-modes.json"
    out.write_text(json.dumps({"machine": environment("cpu"), "rows": rows}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["em", "vb", "self", "dynamic"])
