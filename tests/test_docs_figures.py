"""The documentation's figures are data: every table of numbers in README.md and docs/ is
written by docs/make_tables.py from a row of a file in docs/results/, and is current."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tables():
    spec = importlib.util.spec_from_file_location("make_tables", ROOT / "docs" / "make_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _tables()


def test_every_figure_table_is_current_and_every_table_of_numbers_has_a_source():
    assert tables.check() == []


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    (tmp_path / "speed.csv").write_text(
        "model,size,img_s,date,machine,torch,command\n"
        "a,28,100,2026-12-01,cpu-x,2.11,python speed.py\n"
        "b,28,250,2026-12-01,cpu-x,2.11,python speed.py\n"
        "b,64,60,2026-12-01,cpu-x,2.11,python speed.py --size 64\n"
    )
    return tmp_path


def test_a_block_is_written_from_the_rows_it_asks_for(results):
    page = results / "page.md"
    text = (
        '<!-- figures file=speed.csv columns="model=Model,img_s=img/s" where="size=28" -->\n'
        "old\n<!-- /figures -->\n"
    )
    out = tables.render(page, text)
    assert "| Model | img/s |\n|---|---|\n| a | 100 |\n| b | 250 |\n" in out
    assert "Source: [speed.csv](speed.csv) (cpu-x; torch 2.11; 2026-12-01)" in out
    assert "`python speed.py`" in out and "--size 64" not in out
    assert tables.render(page, out) == out  # written once, current after


def test_a_block_asking_for_a_missing_row_or_column_is_an_error(results):
    page = results / "page.md"
    for attrs in ('columns="model=M" where="size=32"', 'columns="fps=F"'):
        with pytest.raises(tables.FigureError):
            tables.render(page, f"<!-- figures file=speed.csv {attrs} -->\n<!-- /figures -->\n")


def test_a_table_of_numbers_outside_a_block_is_unsourced_unless_marked(results):
    page = results / "page.md"
    table = "| model | img/s |\n|---|---|\n| a | 100 |\n"
    assert len(tables.unsourced_tables(page, table)) == 1
    assert tables.unsourced_tables(page, "<!-- not figures -->\n" + table) == []
    assert (
        tables.unsourced_tables(page, "| flag | meaning |\n|---|---|\n| --out | folder |\n") == []
    )
