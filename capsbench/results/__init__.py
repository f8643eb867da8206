"""Run records, the leaderboard record store, and the scores the leaderboard ranks by.

- ``run_record.py``: the run record (schema version, sealing, verifying, schema check, read, write);
- ``schema.py``: JSON documents against the shipped schemas; the leaderboard record;
- ``entry.py``: a run record -> its small leaderboard record (method naming, record paths);
- ``store.py``: ``capsbench leaderboard add`` (immutable records, conflict rules);
- ``ledger.py``: ``changes.json``, versions and the changelog;
- ``scores.py``: seed statistics per depth, the depth-scalability scores, their intervals and tie-group ranks;
- ``provenance.py``: the hardware and software a protocol's records ran on (mixed environments flagged);
- ``verify.py``: a committed record against its re-run, metric by metric (``leaderboard verify``; the
  re-running itself is ``capsbench.rerun``, which drives the executors).

Rendering (tables, figures, ``leaderboard build``/``check`` and the ``leaderboard`` command)
lives in ``capsbench.report``, which reads results; nothing here imports ``report`` or ``train``.
"""
