"""Where the numbers of one protocol version came from: the hardware and software of its records.

Each record carries the environment it ran in (``capsbench.env.environment``). A protocol table
shows every distinct (CPU or GPU, torch, Python, numerics mode) with its record count, and flags
the table as *mixed* when there is more than one: results of ``native`` numerics from different
CPUs differ by noise (capsbench/numerics.py), so such a table compares methods across machines.

Example::

    summary(entries)   # {"mixed": False, "environments": [{"hardware": "AMD EPYC", ..., "records": 56}]}
"""

from __future__ import annotations

from collections import Counter

FIELDS = ("hardware", "torch", "python", "numerics")


def describe(env: dict) -> dict:
    """The provenance fields of one record's environment ('unknown' where an older record does not say).

    Under ``native`` numerics a CPU's bits follow the instruction set torch dispatches to, not the model name (an
    AMD EPYC with AVX-512 and one with AVX2 train the same spec to different numbers), so the hardware of a native
    CPU record names it: ``AMD EPYC (AVX512)``. ``portable`` pins it, so there it would say nothing."""
    numerics = env.get("numerics") or {}
    hardware = env.get("gpu") or env.get("cpu_model") or f"unknown {env.get('machine') or ''} CPU".replace("  ", " ")
    isa = numerics.get("aten_cpu_capability")
    if isa and not env.get("gpu") and numerics.get("mode", "native") == "native":
        hardware = f"{hardware} ({isa})"
    return {
        "hardware": hardware,
        "torch": str(env.get("torch", "unknown")),
        "python": str(env.get("python", "unknown")),
        "numerics": numerics.get("mode", "native"),
    }


def summary(entries: list[dict]) -> dict:
    counts = Counter(tuple(describe(e["environment"])[k] for k in FIELDS) for e in entries)
    envs = [{**dict(zip(FIELDS, key)), "records": n} for key, n in sorted(counts.items())]
    return {"mixed": len(envs) > 1, "environments": envs}


def text(prov: dict) -> str:
    """One line: ``AMD EPYC · torch 2.14.1 · Python 3.11.7 · numerics portable (60 records)``; mixed flagged."""
    parts = [f"{e['hardware']} · torch {e['torch']} · Python {e['python']} · numerics {e['numerics']} "
             f"({e['records']} record{'s' if e['records'] != 1 else ''})" for e in prov["environments"]]
    head = "MIXED ENVIRONMENTS (results compare across machines): " if prov["mixed"] else ""
    return head + "; ".join(parts)
