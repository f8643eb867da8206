"""Read what a run directory saved (no model, no re-training): record, metrics.jsonl, activations.npz.

Example::

    run = RunDir(Path("runs/quickstart/depth1-seed0-cedb70a6"))
    run.record                  # validated run record, or None while the run is unfinished
    run.activations("val")      # {epoch: {layer: array of per-type mean activations}}
    run.select_epochs("first,last", "val")     # [1, 4]
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path

from capsbench.errors import UserError
from capsbench.results.run_record import read_run_record

_KEY = re.compile(r"^(?P<split>[a-z]+)/epoch(?P<epoch>\d+)/(?P<layer>.+)$")
_KIND_ORDER = {"primary": 0, "conv": 1, "class": 2}


def parse_epochs(text: str) -> list[str | int]:
    """``first,last`` | ``1,5`` | ``all`` -> tokens; bad input is a one-line UserError."""
    tokens = [t.strip() for t in str(text).split(",") if t.strip()]
    out: list[str | int] = []
    for t in tokens:
        if t in ("first", "last", "all"):
            out.append(t)
        elif t.isdigit() and int(t) >= 1:
            out.append(int(t))
        else:
            raise UserError(f"--epochs: expected first, last, all or epoch numbers >= 1 separated by commas "
                            f"(e.g. first,last or 1,5), got '{text}'")
    if not out:
        raise UserError(f"--epochs: expected at least one epoch, got '{text}'")
    return out


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @cached_property
    def record(self) -> dict | None:
        path = self.path / "record.json"
        return read_run_record(path) if path.exists() else None

    @cached_property
    def history(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        lines = []
        for i, text in enumerate(path.read_text().splitlines(), start=1):
            if not text.strip():
                continue
            try:
                lines.append(json.loads(text))
            except ValueError:
                raise UserError(f"{path}: line {i} is not valid JSON") from None
        return lines

    def history_by_epoch(self) -> dict[int, dict]:
        return {int(line["epoch"]): line for line in self.history if "epoch" in line}

    @cached_property
    def _activations(self) -> dict[str, dict[int, dict]]:
        import numpy as np

        path = self.path / "activations.npz"
        out: dict[str, dict[int, dict]] = {}
        if not path.exists():
            return out
        try:
            with np.load(path) as z:
                for key in z.files:
                    m = _KEY.match(key)
                    if m:
                        out.setdefault(m["split"], {}).setdefault(int(m["epoch"]), {})[m["layer"]] = z[key].tolist()
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: cannot be read ({exc})") from None
        return out

    def activations(self, split: str) -> dict[int, dict[str, list]]:
        return self._activations.get(split, {})

    def config(self) -> dict:
        if self.record is not None:
            return self.record["config"]
        path = self.path / "config.yaml"
        if not path.exists():
            return {}
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)

    def layer_order(self) -> list[str]:
        """Capsule layers in forward order: from the record, else by kind (primary, conv, class) then name."""
        if self.record is not None and self.record["metrics"]["layer_order"]:
            return list(self.record["metrics"]["layer_order"])
        kinds: dict[str, str] = {}
        for line in self.history:
            for name, layer in (line.get("layers") or {}).items():
                kinds[name] = str(layer.get("kind", "other"))
        for epochs in self._activations.values():
            for layers in epochs.values():
                for name in layers:
                    kinds.setdefault(name, "other")
        return sorted(kinds, key=lambda n: (_KIND_ORDER.get(kinds[n], 1), _natural(n)))

    def dead_threshold(self) -> float:
        return float((self.config().get("metrics") or {}).get("dead_threshold", 0.01))

    def title(self) -> str:
        cfg = self.config()
        model, data = cfg.get("model") or {}, cfg.get("data") or {}
        from capsbench.results.entry import method_of

        method = method_of(model)[0] if model else "?"
        status = f", {self.record['status']}" if self.record is not None and self.record["status"] != "ok" else ""
        return (f"{self.path.name}: {method}, depth {model.get('depth', '?')}, {data.get('name', '?')}, "
                f"seed {cfg.get('seed', '?')}{status}")

    def select_epochs(self, tokens: list[str | int], split: str) -> tuple[list[int], list[int]]:
        """(epochs to draw, requested epochs this run does not have)."""
        have = sorted(self.activations(split))
        if not have:
            return [], []
        chosen: list[int] = []
        missing: list[int] = []
        for t in tokens:
            picks = {"first": [have[0]], "last": [have[-1]], "all": have}.get(t, [t]) if isinstance(t, str) else [t]
            for epoch in picks:
                if epoch not in have:
                    missing.append(epoch)
                elif epoch not in chosen:
                    chosen.append(epoch)
        return sorted(chosen), missing


def collect_rows(paths: list[Path], row_of, what: str, hint: str = "", log=None) -> list[dict]:
    """``row_of(RunDir)`` for every run folder at or below ``paths`` (finished or not), sorted by path; a folder it
    returns None for is skipped with a warning naming ``what`` it is not. No row at all is bad input (``hint``
    says what a folder needs)."""
    import sys

    from capsbench.results.store import find_runs

    log = log or (lambda line: print(line, file=sys.stderr))
    finished, unfinished = find_runs(paths)
    rows, skipped = [], []
    for path in sorted(finished + unfinished):
        row = row_of(RunDir(path))
        if row is None:
            skipped.append(str(path))
        else:
            rows.append(row)
    if skipped:  # one line: a sweep folder shared with baselines would otherwise print one per baseline run
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        log(f"warning: {len(skipped)} run folder(s) not a {what}, skipped: {', '.join(skipped[:3])}{more}")
    if not rows:
        raise UserError(f"{', '.join(map(str, paths))}: no {what}s found{hint}")
    return rows
