"""The markdown building blocks every written report shares."""

from __future__ import annotations

import pytest

from capsbench.report.markdown import details, fmt_ci, fmt_num, fmt_pct, md_cell, md_table, table_or_note


def test_md_table_escapes_pipes_and_aligns_numbers_right():
    text = md_table(["routing", "acc"], [["a|b", 0.5]], align="lr")
    assert text == "| routing | acc |\n|---|--:|\n| a\\|b | 0.5 |\n"
    assert md_table(["x"], []) == "| x |\n|---|\n"
    assert md_cell("1|2") == "1\\|2"


def test_md_table_refuses_an_alignment_of_the_wrong_width():
    with pytest.raises(ValueError, match="2 letters for 3 columns"):
        md_table(["a", "b", "c"], [], align="lr")


def test_missing_numbers_read_n_a():
    assert (fmt_num(None), fmt_pct(None), fmt_ci(None)) == ("n/a", "n/a", "n/a")
    assert (fmt_num(0.125, ".1f"), fmt_pct(0.394), fmt_ci((0.1, 0.2), ".0f", 100)) == ("0.1", "39.4%", "[10, 20]")
    assert table_or_note(["a"], [], "nothing") == "_nothing_\n"
    assert details("s", "b").startswith("<details><summary>s</summary>")
