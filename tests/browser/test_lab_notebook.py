"""Notebook 07 in JupyterLab, run through the UI in headless Chromium: no cell raises, the widgets render,
the sample browser's figure follows the model dropdown and the rank slider, and the page logs no error."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import pytest

from dpface_lib import REPO_ROOT
from dpface_lib.servers import start_lab

pytestmark = pytest.mark.browser
NOTEBOOK = "07_metric_analysis.ipynb"


def prepare(folder: Path) -> None:
    """A copy of 07 on data_samples (autosave must not touch the repository's file), with an empty runs
    folder and 8 samples per corruption, and lab settings that keep every cell in the page."""
    nb = nbformat.read(REPO_ROOT / "notebooks" / NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    (folder / "runs").mkdir()
    params.source += f"\nruns_dir = {str(folder / 'runs')!r}\nmax_samples = 8\n"
    nbformat.write(nb, folder / NOTEBOOK)
    tracker = folder / "settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))


def wait_until_idle(page, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
        if prompts and all(p.strip() not in ("[*]:", "[ ]:", "") for p in prompts):
            return
        time.sleep(0.5)
    raise AssertionError(f"cells still running after {timeout:.0f} s: {prompts}")


def run_all(page) -> None:
    """Run > Run All Cells from the menu bar, once more if no cell has started 30 s later."""
    for _ in range(2):
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(p.strip() != "[ ]:" for p in page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()):
                return
            time.sleep(0.25)
    raise AssertionError("Run All Cells started no cell")


def browser_maps(page):
    return page.locator(".dpface-maps").first


def test_notebook_07_runs_and_its_widgets_work_in_jupyterlab(page, screenshot, tmp_path: Path) -> None:
    prepare(tmp_path)
    with (tmp_path / "lab.log").open("w") as log:
        server = start_lab(tmp_path, log=log, env={"JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
                                                  "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")})
        try:
            page.goto(f"http://127.0.0.1:{server.port}/lab/tree/{NOTEBOOK}?token={server.token}",
                      wait_until="commit")
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=300_000)
            run_all(page)
            wait_until_idle(page, 400)
            screenshot(page, "lab_07_after_run_all")

            # widgets rendered: the sample browser's three dropdowns, its slider, buttons and figures
            browser = page.locator(".jp-OutputArea-output:has(.dpface-sample)").first
            assert browser.locator("select").count() == 3
            assert browser.locator(".widget-slider").count() == 1
            maps = browser_maps(page)
            maps.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
            header = browser.locator(".dpface-sample-id")
            before = (header.inner_text(), maps.screenshot())

            models = browser.locator("select").first
            options = models.locator("option").all_inner_texts()
            other = next(o for o in options if o != models.input_value())
            models.select_option(other)
            page.wait_for_function("(t) => !document.querySelector('.dpface-maps').innerText.includes(t)",
                                   arg=before[0], timeout=30_000)
            maps.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
            after_model = maps.screenshot()
            assert after_model != before[1], "changing the model did not change the figure"

            sample_before = header.inner_text()
            handle = browser.locator(".widget-slider .noUi-handle").first
            handle.focus()
            handle.press("ArrowRight")
            page.wait_for_function(
                "(t) => document.querySelector('.dpface-sample-id').innerText !== t", arg=sample_before,
                timeout=30_000)
            maps.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
            page.wait_for_timeout(500)
            assert maps.screenshot() != after_model, "moving the rank slider did not change the figure"
            screenshot(page, "lab_07_browser")

            page.keyboard.press("Control+s")
            page.wait_for_timeout(1500)
        finally:
            server.stop()
    saved = nbformat.read(tmp_path / NOTEBOOK, as_version=4)
    code = [c for c in saved.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"a cell raised: {errors[0].ename}: {errors[0].evalue}"
    assert all(c.execution_count for c in code), "not every code cell ran"
    assert not page.problems, page.problems
