"""Re-running committed records: ``leaderboard verify`` (``rerun``) and ``leaderboard rerecord`` (``rerecord``).

``rerun`` trains the chosen records again from their committed configs (see
``capsbench.results.verify`` for how they are compared). ``rerecord`` is the one documented path
that replaces committed records.

When a change of numerics is intended (``leaderboard verify`` fails for it), the protocol's sweep
specs are run again in a FRESH folder (finished runs in an old folder would be reused and give
the old numbers back), and the leaderboard changes through the ordinary, logged operations:
records whose result changed, or that the specs no longer produce, are removed with ``--note``
(``capsbench leaderboard remove``), then every new record is added with the same note
(``leaderboard add``). So ``changes.json`` and CHANGELOG.md say which records changed and why;
nothing is overwritten silently. A new routing (one more name in ``specs/ci/routings.yaml``) is
the same command: its records are simply added.

Example::

    rerecord(Path("leaderboard"), "ci", [Path("specs/ci")], note="vb: log-space responsibilities", jobs=2)
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from capsbench.errors import UserError
from capsbench.results import store
from capsbench.results.entry import record_path, result_of, to_entry
from capsbench.results.run_record import read_run_record

# Where each re-recordable protocol's sweep specs live (every *.yaml below is run).
PROTOCOL_SPECS = {"ci": "specs/ci"}


def rerun(records: dict[str, dict], chosen: list[str], out: Path, jobs: int) -> dict[str, dict]:
    """Train the chosen records again under ``out``; their new leaderboard entries by record path."""
    from capsbench.executors import get_executor
    from capsbench.results.entry import make_entry
    from capsbench.results.verify import run_config

    runs = [run_config(records[rel], rel) for rel in chosen]
    results = get_executor("local", quiet=True, jobs=jobs, retry_failed=False).run_all(runs, out)
    return {rel: make_entry(record) for rel, record in zip(chosen, results)}


@dataclass
class Rerecorded:
    out: Path
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def sweep_runs(protocol: str, spec_paths: list[Path]) -> list:
    from capsbench import spec
    from capsbench.cli import _spec_files

    runs = [run for path in _spec_files([str(p) for p in spec_paths]) for run in spec.load(path)]
    others = sorted({str(r.config.protocol) for r in runs} - {protocol})
    if not runs or others:
        raise UserError(f"{', '.join(map(str, spec_paths))}: expected sweep specs of protocol {protocol}, "
                        f"found {others or 'no runs'}")
    return runs


def rerecord(root: Path, protocol: str, spec_paths: list[Path], note: str | None, jobs: int,
             out: Path | None = None, log=print, only_their_methods: bool = False) -> Rerecorded:
    """Re-run ``spec_paths`` and replace the protocol's changed records (see the module docstring).

    ``only_their_methods``: the specs are some of the protocol's (``--specs``, e.g. a new routing's
    own sweep): only records of the (data set, method) pairs they produce are compared and may be
    removed; the protocol's other records are not theirs to judge and stay.
    """
    if not note:
        raise UserError("leaderboard rerecord: --note: say why the records change (it goes into the changelog)")
    from capsbench.executors import get_executor

    runs = sweep_runs(protocol, spec_paths)
    out = Path(out) if out else Path(tempfile.mkdtemp(prefix=f"capsbench-rerecord-{protocol}-"))
    log(f"re-running {len(runs)} run(s) of protocol {protocol} in {out}")
    records = get_executor("local", quiet=True, jobs=jobs, retry_failed=False).run_all(runs, out)
    fresh = {record_path(to_entry(r)).as_posix(): to_entry(r) for r in records}
    committed = {rel: e for rel, e in store.read_records(root).items() if e["protocol"] == protocol}
    if only_their_methods:
        theirs = {(e["dataset"], e["method"]) for e in fresh.values()}
        committed = {rel: e for rel, e in committed.items() if (e["dataset"], e["method"]) in theirs}
    stale = sorted(rel for rel, e in committed.items() if rel not in fresh or result_of(e) != result_of(fresh[rel]))
    done = Rerecorded(out=out, unchanged=sorted(set(committed) - set(stale)))
    if stale:
        done.removed = store.remove(root, stale, note)
    run_dirs = sorted({p.parent for p in out.rglob("record.json")
                       if record_path(to_entry(read_run_record(p))).as_posix() in fresh})
    done.added = store.add(root, run_dirs, note=note).added
    return done
