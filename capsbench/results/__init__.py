"""Run records, the leaderboard record store, and the versioned depth-scalability leaderboard.

- ``schema.py``: JSON Schemas of run records and leaderboard records, checked on every read and write;
- ``entry.py``: a run record -> its small leaderboard record (method naming, record paths);
- ``store.py``: ``capsbench leaderboard add`` (immutable records, conflict rules);
- ``ledger.py``: ``changes.json``, versions and the changelog;
- ``scores.py``: seed statistics per depth and the depth-scalability scores;
- ``leaderboard.py``: ``capsbench leaderboard build`` and ``check`` (deterministic, derived only from records);
- ``cli.py``: the ``leaderboard`` command.
"""
