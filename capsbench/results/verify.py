"""``capsbench leaderboard verify``: re-run committed records and compare every metric with the record.

Which records: by default every record of the ``ci`` protocol (its whole sweep, a few minutes);
``--protocol P --sample N`` re-runs N records of a heavier protocol, chosen deterministically
(the N smallest sha256 of their paths, so a nightly job re-runs the same N until records change).

How a record is re-run (``capsbench.rerun.rerun``): its committed config (seed included) is
validated into a run config again (``run_config``), which must hash to the record's spec hash
(else the config schema changed under it and the record says so), and trained in a scratch
folder under the record's ``numerics`` mode.

How results are compared (``compare``), by the numerics of the record and of the re-run:

- ``portable`` records (the ``ci`` protocol): bit-identical across x86 CPUs (capsbench/numerics.py),
  so every metric must be EQUAL. Any difference is a change of the code (or of the software:
  torch, MKL, libm; both environments are printed then);
- ``native`` records re-run on the same CPU model, thread count and torch version: equal too (the
  same machine repeats itself exactly);
- ``native`` records on another CPU, thread count or torch: only the accuracies are compared, within
  ``NATIVE_ACCURACY_TOL``. Derived from the measured spread (issue 15): paper-mini capsnet-self /
  mnist / depth 1 gave 85.5-86.1% on other CPUs and thread counts against the committed 85.9%
  (1,000 test images), a largest deviation of 0.4 points; the tolerance is twice that, 0.8 points.
  Other metrics (dead counts, gradient norms) move with them and are not compared; the output
  says how many were skipped.

A mismatch is one line: ``<record>: <metric>: recorded <a>, now <b>``.

Example::

    chosen = select(read_records(root), "ci", sample=None)
    lines = compare(rel, committed_entry, new_entry)       # [] when they agree
"""

from __future__ import annotations

import hashlib
import math

from capsbench.errors import UserError
from capsbench.results.entry import result_of

NATIVE_ACCURACY_TOL = 0.008  # 2 x the largest measured cross-CPU deviation (0.4 points), see above
ACCURACY_KEYS = ("metrics.test_accuracy", "metrics.val_accuracy", "metrics.best_val_accuracy")
MAX_LINES_PER_RECORD = 12


def select(records: dict[str, dict], protocol: str, sample: int | None) -> list[str]:
    """Record paths of ``protocol`` to re-run: all, or a deterministic sample of ``sample`` of them."""
    chosen = sorted(rel for rel, entry in records.items() if entry["protocol"] == protocol)
    if not chosen:
        raise UserError(f"--protocol {protocol}: no committed records of that protocol")
    if sample is not None:
        if sample < 1:
            raise UserError(f"--sample: expected an integer >= 1, got {sample}")
        chosen = sorted(sorted(chosen, key=lambda rel: hashlib.sha256(rel.encode()).hexdigest())[:sample])
    return chosen


def flatten(value, prefix: str = "") -> dict[str, object]:
    """Dotted leaf keys of nested dicts and lists: ``metrics.layers.conv1.types.3``."""
    if isinstance(value, dict):
        out = {}
        for key in sorted(value):
            out.update(flatten(value[key], f"{prefix}{key}."))
        return out
    if isinstance(value, list) and value and all(isinstance(v, (dict, list, int, float)) or v is None for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): value}


def same_machine(a: dict, b: dict) -> bool:
    """Would a native run repeat itself exactly: same CPU model, thread count and torch."""
    def key(env):
        return (env.get("cpu_model"), (env.get("numerics") or {}).get("threads", env.get("torch_threads")),
                env.get("torch"))

    return key(a) == key(b) and a.get("cpu_model") is not None


def mode_of(entry: dict) -> str:
    return (entry["environment"].get("numerics") or {}).get("mode", "native")


def _equal(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare(rel: str, old: dict, new: dict) -> tuple[list[str], int]:
    """(one line per differing metric, number of metrics not compared) of a record and its re-run."""
    exact = mode_of(old) == "portable" or same_machine(old["environment"], new["environment"])
    a, b = flatten(result_of(old)), flatten(result_of(new))
    lines, skipped = [], 0
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, "(absent)"), b.get(key, "(absent)")
        if exact or key in ("status", "diverged_epoch"):
            if not _equal(x, y):
                lines.append(f"{rel}: {key}: recorded {x!r}, now {y!r}")
        elif key in ACCURACY_KEYS:
            if (x is None) != (y is None) or (x is not None and abs(x - y) > NATIVE_ACCURACY_TOL):
                lines.append(f"{rel}: {key}: recorded {x!r}, now {y!r} (tolerance {NATIVE_ACCURACY_TOL} for native "
                             "numerics on another machine)")
        else:
            skipped += 1
    if len(lines) > MAX_LINES_PER_RECORD:
        lines = lines[:MAX_LINES_PER_RECORD] + [f"{rel}: ... and {len(lines) - MAX_LINES_PER_RECORD} more metric(s)"]
    return lines, skipped


def run_config(entry: dict, source: str):
    """The run config of a committed record, checked to hash to its spec hash."""
    from capsbench import spec

    try:
        cfg = spec.build_config(dict(entry["config"]))
    except UserError as exc:
        raise UserError(f"{source}: its config no longer validates ({exc}); the record cannot be re-run by this "
                        "capsbench: re-record it (CONTRIBUTING.md, 'Re-record')") from None
    digest = spec.spec_hash(cfg)
    if digest != entry["spec_hash"]:
        raise UserError(f"{source}: its config hashes to {digest[:12]}, not to its spec hash {entry['spec_hash'][:12]} "
                        "(a config key's meaning or default changed); re-record it (CONTRIBUTING.md, 'Re-record')")
    return spec.RunSpec(config=cfg, spec_hash=digest, point={})


def coverage(records: dict[str, dict], protocol: str, routings: list[str]) -> list[str]:
    """One line per registered routing without records in ``protocol`` (every shipped routing must have them)."""
    have = {e["routing"] for e in records.values() if e["protocol"] == protocol and not e["baseline"]}
    return [f"routing {name}: no {protocol} records; add it to specs/ci/routings.yaml (model.routing) and run "
            f"`capsbench leaderboard rerecord --protocol {protocol} --note \"new routing {name}\"`"
            for name in routings if name not in have]
