"""Figures from saved runs: the paper's Figures 1-7 and per-layer gradient norms.

``capsbench report RUN_OR_SWEEP_DIR`` (see ``write.py``) draws them from run directories;
``leaderboard.py`` builds and checks the leaderboard's tables (``leaderboard_tables.py``) and
figures (``depth.py``) from the records ``capsbench.results`` stores, with the web page
(``leaderboard_page.py``) and what a pending change does to the tables (``leaderboard_diff.py``);
``leaderboard_cli.py`` is the ``capsbench leaderboard`` command. ``capsbench report SWEEP --questions
long-cpu`` answers the long protocol's pre-registered questions (``lifecycle.py`` per type,
``questions.py`` the rules, ``questions_markdown.py`` and ``questions_write.py`` the output). Plotting
uses matplotlib's Agg canvas directly and is deterministic (see ``style.py``).
"""
