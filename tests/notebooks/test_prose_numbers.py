"""No hand-typed result in a notebook's prose.

A number in a markdown cell is typed by hand and goes stale when a run changes; a number that a code cell
renders (``display(Markdown(...))``, ``dpface_lib.notebook.say``) is computed by the run that shows it. So a
markdown cell may hold a number only when the same sentence names where it comes from (a paper, a venue,
a file of the kit's docs, a web address), or when it is one of a few constants (:data:`ALLOWED`).

What counts as a number to check: a decimal (``0.24``, ``5.657``), and an integer with a unit (``83 mm``,
``450 steps``, ``12 %``). Counts without a unit (``27 taps``, ``3×3×3``), section numbers, notebook numbers,
years, version strings and everything inside LaTeX math or code spans are left alone.

Modes:
- the synthetic notebooks below (built with nbformat) check the rules themselves;
- the kit's own notebooks in :data:`CHECKED` are checked as committed (their markdown is what a run shows);
- ``DPFACE_PROSE_RUN_DIR=runs/NAME pytest tests/notebooks/test_prose_numbers.py`` checks every executed
  notebook of a pipeline run folder (``DPFACE_PROSE_NOTEBOOKS``: optional comma-separated name prefixes).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
#: Notebooks whose prose is checked in every test run: all of the kit's.
CHECKED = ("00_quickstart", "01_dataset_exploration", "02_dp_geometry", "03_dp_simulator",
           "04_classical_dp_matching", "05_train_baseline", "06_stereodpnet_anm", "07_metric_analysis",
           "08_deformable_conv3d", "09_real_dp_data")
#: Constants that need no source: zero, one (a unit amount, "1 px of error"), and a few of physics.
ALLOWED = {"0", "1", "0.0", "1.0", "25.4", "3.14159", "2.71828"}

_MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.S)
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_URL = re.compile(r"https?://\S+")
_HTML = re.compile(r"<[^>]+>")
_HEADING_NUMBER = re.compile(r"^(#+)\s*\d+(\.\d+)*\s*[.·:]?", re.M)
_LIST_NUMBER = re.compile(r"^(\s*)\d+[.)]\s", re.M)
_REFERENCE = re.compile(r"\b(notebooks?|cells?|sections?|figure|table|issue|camera|cam|light)"
                        r"\s+\d+(\s*(,|and|or|–|-)\s*\d+)*", re.I)
_VERSION = re.compile(r"\b\d+\.\d+\.\d+\b")
_UNITS = (r"px|pixels?|mm|µm|um|cm|m|nm|s|ms|min|minutes?|seconds?|h|hours?|%|°|deg|degrees?|steps?|samples?"
          r"|views?|persons?|epochs?|bins?|GB|MB|GiB|MiB|K|M|x|×|fps|it/s|dB")
_NUMBER = re.compile(r"(?<![\w./-])[-−+]?(\d[\d,]*\.\d+|\d[\d,]*(?=\s?(?:" + _UNITS + r")(?![\w])))")
_ATTRIBUTION = re.compile(
    r"et al\.|\b(ICCV|ECCV|CVPR|ICCP|SIGGRAPH|TOG|NeurIPS|ICLR|WACV|BMVC|TPAMI|IJCV|arXiv)\b|\bdocs/[\w./-]+"
    r"|\bREADME\b|https?://|\bdatasheet\b|\brelease notes\b|\(source:|\baccording to\b", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z*_(\[])|\n\s*\n|\n(?=\s*[-*]\s|\s*\|)")


@dataclass(frozen=True)
class Finding:
    """A number of a markdown cell with no source in its sentence."""

    cell: int
    number: str
    sentence: str

    def __str__(self) -> str:
        return f"markdown cell {self.cell}: {self.number!r} in {self.sentence.strip()[:160]!r}"


def _prose(text: str) -> str:
    """The sentences a reader sees, with the parts that hold no run numbers taken out."""
    for pattern, repl in ((_CODE, " CODE "), (_MATH, " MATH "), (_LINK_TARGET, "]"), (_URL, " URL "),
                          (_HTML, " "), (_VERSION, " VERSION "), (_REFERENCE, " REF ")):
        text = pattern.sub(repl, text)
    text = _HEADING_NUMBER.sub(r"\1", text)
    return _LIST_NUMBER.sub(r"\1", text)


def unsupported_numbers(nb: nbformat.NotebookNode) -> list[Finding]:
    """Every number of ``nb``'s markdown cells that is neither attributed in its sentence nor allowed.

    Numbers in code cell outputs (rendered markdown included) are computed by the run and never flagged.
    """
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        for sentence in _SENTENCE_END.split(_prose(cell.source)):
            if _ATTRIBUTION.search(sentence):
                continue
            for match in _NUMBER.finditer(sentence):
                number = match.group(1).replace(",", "")
                if number.lstrip("-−+") not in ALLOWED:
                    found.append(Finding(index, match.group(0), sentence))
    return found


def _notebook(*cells: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return nb


def _rendered(text: str) -> nbformat.NotebookNode:
    """A code cell whose output is markdown rendered by the run (what ``say`` leaves behind)."""
    cell = nbformat.v4.new_code_cell('say(f"...")')
    data = {"text/markdown": text, "text/plain": "<IPython.core.display.Markdown object>"}
    cell.outputs = [nbformat.v4.new_output("display_data", data=data)]
    return cell


def _md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(text)


def test_a_typed_run_number_is_found_with_its_cell() -> None:
    nb = _notebook(_md("# 05 · Training"),
                   _md("The model reached ai1 0.0937 px after 650 steps. It is fast."))
    found = unsupported_numbers(nb)
    assert [(f.cell, f.number) for f in found] == [(1, "0.0937"), (1, "650")]
    assert "ai1 0.0937" in found[0].sentence and "fast" not in found[0].sentence


def test_units_percent_and_thousands_count_plain_counts_do_not() -> None:
    nb = _notebook(_md("One pixel is about 83 mm here; 12 % of the faces; 3,200 samples."),
                   _md("A 3×3×3 kernel has 27 taps and 81 offset channels."))
    assert [f.number for f in unsupported_numbers(nb)] == ["83", "12", "3,200"]


def test_rendered_markdown_outputs_are_computed() -> None:
    nb = _notebook(_md("The error of this run:"), _rendered("The median error is **0.24 px** on 128 views."))
    assert unsupported_numbers(nb) == []


def test_attributed_numbers_pass_in_their_own_sentence_only() -> None:
    nb = _notebook(_md("Garg et al. (ICCV 2019) report 0.081 on their set. This run gives 0.093 px."))
    assert [f.number for f in unsupported_numbers(nb)] == ["0.093"]
    docs = _notebook(_md("A step took 0.62 s on the slow host (docs/benchmarks.md)."))
    assert unsupported_numbers(docs) == []


def test_math_code_headings_references_and_versions_are_not_prose() -> None:
    nb = _notebook(
        _md("## 3. Why sub-pixel\n\n1. first item with `max_disp = 2.5`\n2. the ideal $k = 0.42$"),
        _md("$$a = -k\\,\\frac{f_y}{N} \\approx 0.13$$ See notebook 07 and cell 12, menpo3d 0.8.6."),
        _md("Camera 1 and light 6; one pixel of error is 1 px, and 0 px on the focus plane."),
    )
    assert unsupported_numbers(nb) == []


def test_a_table_row_is_its_own_sentence() -> None:
    nb = _notebook(_md("| model | ai1 |\n|---|---|\n| dpnet | 0.081 |\n| psmnet (Chang et al.) | 0.109 |"))
    assert [f.number for f in unsupported_numbers(nb)] == ["0.081"]


@pytest.mark.parametrize("name", CHECKED)
def test_the_kits_notebooks_type_no_run_numbers(name: str) -> None:
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    found = unsupported_numbers(nb)
    why = "numbers typed into the prose (render them with say(), or name a source)"
    assert not found, f"{name}: {why}:\n" + "\n".join(map(str, found))


def _run_notebooks() -> list[Path]:
    folder = os.environ.get("DPFACE_PROSE_RUN_DIR")
    if not folder:
        return []
    prefixes = tuple(p for p in os.environ.get("DPFACE_PROSE_NOTEBOOKS", "").split(",") if p)
    paths = sorted(Path(folder).glob("*.ipynb"))
    return [p for p in paths if not prefixes or p.name.startswith(prefixes)]


@pytest.mark.skipif(not os.environ.get("DPFACE_PROSE_RUN_DIR"), reason="set DPFACE_PROSE_RUN_DIR=runs/NAME")
@pytest.mark.parametrize("path", _run_notebooks(), ids=lambda p: p.name)
def test_an_executed_run_types_no_run_numbers(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    assert any(c.cell_type == "code" and c.get("outputs") for c in nb.cells), f"{path.name} was not executed"
    found = unsupported_numbers(nb)
    assert not found, f"{path.name}:\n" + "\n".join(map(str, found))


def test_run_mode_needs_a_folder_with_notebooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat.write(_notebook(_md("x"), nbformat.v4.new_code_cell("1")), tmp_path / "quickstart.ipynb")
    nbformat.write(_notebook(_md("x")), tmp_path / "train__model-dpnet.ipynb")
    monkeypatch.setenv("DPFACE_PROSE_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("DPFACE_PROSE_NOTEBOOKS", "train")
    assert [p.name for p in _run_notebooks()] == ["train__model-dpnet.ipynb"]
