"""Figures from saved runs: the paper's Figures 1-7 and per-layer gradient norms.

``capsbench report RUN_OR_SWEEP_DIR`` (see ``write.py``) draws them from run directories;
``capsbench leaderboard build`` reuses ``depth.py`` for the leaderboard's figures. Plotting
uses matplotlib's Agg canvas directly and is deterministic (see ``style.py``).
"""
