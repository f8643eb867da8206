"""Quickstart training speed with one core kept busy by another process: torch's default threads vs capsbench's.

    python benchmarks/quickstart_threads.py [--reps 3] [--tag TAG] [key=value ...]

Starts one busy-looping process (killed by pid at the end), then runs ``capsbench run
specs/quickstart.yaml`` alternately with ``OMP_NUM_THREADS=<usable cores>`` (what torch picks by
itself: one thread per core of the machine, the behaviour before ``capsbench/cpus.py``) and
without it (capsbench's default: ``min(executor.cpus, usable cores)``, 1 for the quickstart), and
records each run's training images/s, the load average and the machine in
``results/threads-quickstart-<tag>.json``. The machine's other load counts: compare the two
columns of one file, never numbers across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def images_per_s(out: Path) -> dict[str, float]:
    return {
        p.parent.name.split("-")[0]: json.loads(p.read_text())["timings"]["images_per_s"]
        for p in sorted(out.rglob("record.json"))
    }


def one(env: dict, overrides: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="capsbench-threads-") as out:
        subprocess.run(
            [sys.executable, "-m", "capsbench", "run", str(REPO / "specs" / "quickstart.yaml"), *overrides,
             "--out", out, "--quiet"],
            env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return images_per_s(Path(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tag", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from capsbench.cpus import threads_per_run, usable_cores
    from capsbench.env import environment

    cores = usable_cores()
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    variants = {"torch default": dict(base, OMP_NUM_THREADS=str(cores)), "capsbench default": base}
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    rows = []
    try:
        for rep in range(args.reps):
            for name, env in variants.items():
                speeds = one(env, args.overrides)
                rows.append({"variant": name, "rep": rep, "images_per_s": speeds, "loadavg": os.getloadavg()})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        busy.kill()
        busy.wait()
    result = {
        "command": " ".join(["python", "benchmarks/quickstart_threads.py", *sys.argv[1:]]),
        "usable_cores": cores,
        "threads": {"torch default": cores, "capsbench default": threads_per_run(1, 1, cores)},
        "rows": rows,
        "environment": environment("cpu"),
    }
    tag = args.tag or f"cpu{cores}"
    path = REPO / "benchmarks" / "results" / f"threads-quickstart-{tag}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"written {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
