"""Markdown building blocks of every written report (the long-cpu questions, the remedies verdicts, the
leaderboard README): one escaping rule, one table shape and one way to print a number that is missing, so the
pages read alike and a fix to one reaches all.

Example::

    md_table(["routing", "accuracy"], [["em", fmt_pct(0.394)]], align="lr")
"""

from __future__ import annotations


def md_cell(x) -> str:
    """A cell's text; a literal ``|`` would end the cell, so it is escaped."""
    return str(x).replace("|", "\\|")


def md_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A pipe table ending in a newline. ``align``: one letter per column, ``l`` (text) or ``r`` (numbers,
    right-aligned so decimal places line up); plain ``---`` for every column when None."""
    if align is not None and len(align) != len(headers):
        raise ValueError(f"align={align!r} has {len(align)} letters for {len(headers)} columns")
    rule = ["---" if align is None or a == "l" else "--:" for a in (align or "l" * len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table_or_note(headers: list[str], rows: list[list], note: str) -> str:
    """The table, or one line when no row has anything to show (a finished sweep with no dying type)."""
    return md_table(headers, rows) if rows else f"_{note}_\n"


def details(summary: str, body: str) -> str:
    """A folded block: long listings stay out of the way of the answers."""
    return f"<details><summary>{summary}</summary>\n\n{body}\n</details>\n"


def fmt_num(x, fmt=".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def fmt_ci(ci, fmt=".2f", scale=1.0) -> str:
    return "n/a" if not ci else f"[{format(ci[0] * scale, fmt)}, {format(ci[1] * scale, fmt)}]"


def fmt_pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"
