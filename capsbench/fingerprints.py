"""Routing fingerprints: every registered routing on a fixed tiny float64 input, forward and backward.

Why: a change of numerics in a routing (an epsilon, a reduction order, a clamp) moves every result
of that routing, and re-training to notice takes minutes; the fingerprint notices in well under a
second per routing. It is machine-independent: float64, one thread, deterministic algorithms, and
parameters and inputs drawn from fixed generators (not from the routing's own initialisation, so a
fingerprint pins the arithmetic, not the init).

What is stored (``leaderboard/fingerprints/<routing>.json``), per tensor (the outputs pose and
activation of a ``ConvCaps`` (k3 s1 p1, 2 -> 2 types on a 3x3 grid) and of the ``ClassCaps`` after it,
the gradients of a fixed weighted sum of both outputs with respect to the input capsules and to
every parameter): its shape, sum, sum of squares and up to ``SAMPLES`` entries at evenly spaced
flat positions, as 17-digit floats. Compared at a relative tolerance of ``RTOL`` (1e-9): float64
on another CPU (other SIMD width, FMA) moves values by ~1e-15, a real change by far more. A
mismatch names the routing, the tensor, the entry and both values.

Re-recording is ``capsbench fingerprints record ROUTING --note WHY``: it refuses to overwrite a
differing fingerprint without a note and appends the note, date and commit to the file's
``history``, so every change of numerics stays explained.

Example::

    fingerprint("em")                     # {"tensors": {"conv.out.pose": {...}, ...}, ...}
    compare("em", stored, fingerprint("em"))   # [] or one line per differing tensor
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

from capsbench.errors import UserError
from capsbench.io import write_text

FINGERPRINT_VERSION = 1
FOLDER = Path("leaderboard") / "fingerprints"
SAMPLES = 48  # entries kept per tensor (all of them when it has fewer)
RTOL = 1e-9
ATOL = 1e-12  # relative to the largest stored magnitude of the tensor or its group (entries ~0 by cancellation)
_SETUP = {"batch": 2, "in_types": 2, "conv_types": 2, "classes": 3, "grid": 3, "pose_dim": 16, "iterations": 2}


def record_command(names: list[str] | str, note: str = "WHY") -> str:
    names = [names] if isinstance(names, str) else names
    return f"capsbench fingerprints record {' '.join(names)} --note \"{note}\""


def _fill(tensor, key: str, low: float, high: float):
    """Values in [low, high) from a generator seeded by ``key``: the same for the same key everywhere."""
    import torch

    gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    return torch.rand(tensor.shape, generator=gen, dtype=torch.float64) * (high - low) + low


def _layers(name: str):
    from capsbench.capsules.layers import ClassCaps, ConvCaps

    s = _SETUP
    conv = ConvCaps(s["in_types"], s["conv_types"], kernel_size=3, stride=1, padding=1, routing=name,
                    pose_dim=s["pose_dim"], iterations=s["iterations"])
    head = ClassCaps(s["conv_types"], s["classes"], routing=name, pose_dim=s["pose_dim"],
                     in_hw=(s["grid"], s["grid"]), iterations=s["iterations"])
    return conv.double(), head.double()


def _summary(values) -> dict:
    flat = values.detach().reshape(-1).tolist()
    n = len(flat)
    step = max(1, n // SAMPLES)
    picked = list(range(0, n, step))[:SAMPLES]
    return {
        "shape": list(values.shape),
        "sum": math.fsum(flat),
        "sum_sq": math.fsum(x * x for x in flat),
        "index": picked,
        "values": [flat[i] for i in picked],
    }


def fingerprint(name: str) -> dict:
    """The fingerprint of routing ``name`` (registry name), computed here and now."""
    import torch

    from capsbench.capsules.types import Capsules

    s = _SETUP
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        conv, head = _layers(name)
        with torch.no_grad():
            for module_name, module in (("conv", conv), ("class", head)):
                for pname, param in module.named_parameters():
                    # around 1 in scale, either sign: BatchNorm weights stay positive-ish by the offset
                    param.copy_(_fill(param, f"{module_name}.{pname}", -0.5, 0.5) + (1.0 if "bn" in pname.lower()
                                                                                     else 0.0))
        shape = (s["batch"], s["in_types"], s["pose_dim"], s["grid"], s["grid"])
        pose = _fill(torch.empty(shape), "input.pose", -1.0, 1.0).requires_grad_(True)
        act = _fill(torch.empty(shape[:2] + shape[3:]), "input.activation", 0.05, 0.95).requires_grad_(True)
        mid = conv(Capsules(pose, act))
        out = head(mid)
        tensors = {"conv.out.pose": mid.pose, "conv.out.activation": mid.activation,
                   "class.out.pose": out.pose, "class.out.activation": out.activation}
        loss = sum((t * _fill(t, f"loss.{k}", -1.0, 1.0)).sum() for k, t in tensors.items())
        loss.backward()
        result = {k: _summary(t) for k, t in tensors.items()}
        for key, leaf in (("grad.input.pose", pose), ("grad.input.activation", act)):
            if leaf.grad is not None:  # dynamic routing never reads the input activation
                result[key] = _summary(leaf.grad)
        for module_name, module in (("conv", conv), ("class", head)):
            for pname, param in module.named_parameters():
                if param.grad is not None:
                    result[f"grad.{module_name}.{pname}"] = _summary(param.grad)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
    return {"version": FINGERPRINT_VERSION, "routing": name, "setup": dict(_SETUP), "tensors": result}


def _close(a: float, b: float, scale: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= RTOL * max(abs(a), abs(b)) + ATOL * scale


def _group(key: str) -> str:
    """``grad`` for every gradient, else the layer (``conv.out.pose`` -> ``conv``)."""
    return key.split(".", 1)[0]


def compare(name: str, stored: dict, now: dict) -> list[str]:
    """One line per tensor of routing ``name`` whose values differ (empty when they agree)."""
    lines = []
    if stored.get("version") != now["version"] or stored.get("setup") != now["setup"]:
        return [f"fingerprint {name}: recorded with another fingerprint setup; re-record it: {record_command(name)}"]
    old, new = stored.get("tensors", {}), now["tensors"]
    # Absolute tolerance scales with the largest stored value of the tensor's group (the outputs of one
    # layer, or every gradient of the routing): a gradient that is zero in exact arithmetic (VB's betas
    # under its activation BatchNorm) holds pure rounding noise, and its own maximum is that noise.
    group_scale: dict[str, float] = {}
    for key, entry in old.items():
        group = _group(key)
        group_scale[group] = max([group_scale.get(group, 0.0)] + [abs(v) for v in entry.get("values", [])])
    for key in sorted(set(old) | set(new)):
        if key not in new or key not in old:
            lines.append(f"fingerprint {name}: {key}: {'no longer computed' if key not in new else 'new tensor'}")
            continue
        a, b = old[key], new[key]
        if a["shape"] != b["shape"] or a["index"] != b["index"]:
            lines.append(f"fingerprint {name}: {key}: shape {a['shape']} -> {b['shape']}")
            continue
        scale = max([abs(v) for v in a["values"]] + [group_scale.get(_group(key), 0.0), 1e-300])
        bad = [(i, x, y) for i, x, y in zip(a["index"], a["values"], b["values"]) if not _close(x, y, scale)]
        for stat in ("sum", "sum_sq"):
            if not _close(a[stat], b[stat], max(scale, abs(a[stat]))):
                bad.append((stat, a[stat], b[stat]))
        if bad:
            where, x, y = bad[0]
            rel = abs(x - y) / max(abs(x), abs(y), 1e-300)
            lines.append(f"fingerprint {name}: {key}[{where}]: recorded {x!r}, now {y!r} (relative {rel:.2e}; "
                         f"{len(bad)} of {len(a['values']) + 2} stored values differ)")
    return lines


def path_of(folder: Path, name: str) -> Path:
    return Path(folder) / f"{name}.json"


def read(folder: Path, name: str) -> dict | None:
    path = path_of(folder, name)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path}: malformed JSON ({exc}); restore it from version control or re-record it: "
                        f"{record_command(name)}") from None


def check(folder: Path, names: list[str] | None = None) -> list[str]:
    """One line per problem over ``names`` (default: every registered routing, plugins included)."""
    from capsbench.registry import ROUTINGS

    names = names or ROUTINGS.names()
    lines = []
    for name in names:
        stored = read(folder, name)
        if stored is None:
            lines.append(f"fingerprint {name}: missing ({path_of(folder, name)}); add it: "
                         f"{record_command(name, 'new routing ' + name)}")
            continue
        lines.extend(compare(name, stored, fingerprint(name)))
    known = set(names)
    for path in sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []:
        if path.stem not in known and names is None:
            lines.append(f"fingerprint {path.stem}: {path} has no registered routing; remove the file")
    return lines


def record(folder: Path, names: list[str], note: str | None, date: str, commit: str) -> list[str]:
    """Write the fingerprints of ``names``; a changed one needs ``note`` (kept in its history). Returns lines."""
    out = []
    for name in names:
        stored = read(folder, name)
        now = fingerprint(name)
        if stored is not None and not compare(name, stored, now):
            out.append(f"unchanged  {path_of(folder, name)}")
            continue
        if not note:
            raise UserError(f"fingerprints record: --note: say why the numerics of '{name}' changed (or that it is "
                            "new); it is kept in the file's history")
        now["history"] = [*(stored or {}).get("history", []), {"date": date, "commit": commit, "note": note}]
        write_text(path_of(folder, name), json.dumps(now, indent=1, sort_keys=True, allow_nan=True) + "\n")
        out.append(f"{'changed' if stored else 'added'}    {path_of(folder, name)}")
    return out
