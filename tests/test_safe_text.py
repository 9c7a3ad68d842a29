"""alctl.safe_text: each format function keeps untrusted text from changing the structure it is written into."""

from __future__ import annotations

import pytest

from alctl.safe_text import csv_cell, csv_value

FORMULA = ("=", "+", "-", "@", "\t", "\r")


@pytest.mark.parametrize("text", ["=1+1", "+x", "-3", "@SUM(A1)", "\tx", "\rx", "'=x", "''+x", "'", "'plain",
                                  "plain", "", "a=b", "'" * 3])
def test_csv_cell_never_starts_a_formula_and_csv_value_reads_it_back_exactly(text: str) -> None:
    cell = csv_cell(text)
    assert not cell.startswith(FORMULA)
    assert csv_value(cell) == text
    # one quote more only where a formula would start after the text's own leading quotes
    assert cell == ("'" + text if text.lstrip("'").startswith(FORMULA) else text)


def test_csv_value_leaves_cells_it_did_not_quote() -> None:
    assert csv_value("'plain") == "'plain" and csv_value("=typed") == "=typed" and csv_value("'") == "'"
