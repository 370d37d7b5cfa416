"""``dpface dashboard`` in headless Chromium: served on loopback with a token, it lets a user pick a model,
move to the worst sample (the sample id and the figure change), read values by hovering, and says what to
rerun for a run without saved predictions. The server is stopped by process group, even on failure."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dpface_lib.corruptions import CorruptedGroundTruth
from dpface_lib.dashboard import ranked
from dpface_lib.data import DATA_SAMPLES, FaceDPDataset, evenly_spaced
from dpface_lib.evaluate import evaluate_model, write_tables
from dpface_lib.servers import stop_process_group

pytestmark = pytest.mark.browser
#: Voila's lab template links Font Awesome from a CDN; offline, that request fails (the dashboard uses no icons).
OFFLINE_CDN = "cdn.jsdelivr.net/npm/@fortawesome"


def make_run(folder: Path) -> dict[str, object]:
    """A pipeline-like run folder: two "models" with saved predictions and a reference row without."""
    dataset = FaceDPDataset(DATA_SAMPLES, "test")
    samples = [dataset[i] for i in evenly_spaced(len(dataset), 8)]
    tables = {}
    for name, kind, predictions in (("noisy", "noise", True), ("holey", "holes", True), ("constant", "blur", False)):
        run = folder / ("reference/" + name if name == "constant" else f"train__model-{name}")
        frame = evaluate_model(CorruptedGroundTruth(kind, noise_rel=0.3, hole_fraction=0.3), samples, name=name,
                               batch_size=8, save_dir=run / "predictions" if predictions else None)
        write_tables(frame, run)
        tables[name] = frame
    return tables


def start(run: Path, log) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "dpface_lib.cli", "dashboard", str(run), "--data-root",
                                str(DATA_SAMPLES)], stdout=subprocess.PIPE, stderr=log, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if match := re.match(r"dashboard: (http://127\.0\.0\.1:\d+/\?token=\S+)", line):
            return process, match.group(1)
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"dpface dashboard printed no URL (exit status {process.poll()})")


def test_dashboard_picks_a_model_steps_to_the_worst_sample_and_hovers(page, screenshot, tmp_path: Path) -> None:
    tables = make_run(tmp_path / "run")
    with (tmp_path / "dashboard.log").open("w") as log:
        process, url = start(tmp_path / "run", log)
        try:
            with urllib.request.urlopen(url.split("?")[0], timeout=30) as anonymous:  # no token: login page
                assert "/login" in anonymous.geturl() and b"DP-Face" not in anonymous.read()
            page.goto(url, wait_until="commit")
            header = page.locator(".dpface-sample-id")
            try:  # the first kernel of a fresh environment imports torch, plotly and the data cold
                header.wait_for(timeout=300_000)
            except Exception as exc:
                log.flush()
                raise AssertionError(f"no sample shown; page: {page.inner_text('body')[-1500:]!r}; dashboard "
                                     f"log: {(tmp_path / 'dashboard.log').read_text()[-3000:]}") from exc
            maps = page.locator(".dpface-maps")
            maps.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
            model = page.locator("select").first
            assert model.locator("option").all_inner_texts()[:2] == ["noisy", "holey"]  # best ai1 first

            model.select_option("holey")
            page.wait_for_function("() => document.querySelector('.dpface-sample').innerText.includes('holey')",
                                   timeout=30_000)
            maps.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
            order = ranked(tables["holey"], "ai1")["sample_id"].tolist()
            page.get_by_role("button", name="next ▶").click()
            page.wait_for_function("(t) => document.querySelector('.dpface-sample-id').innerText === t",
                                   arg=order[1], timeout=30_000)
            maps.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
            page.wait_for_timeout(500)
            second = maps.screenshot()
            page.get_by_role("button", name="worst").click()
            page.wait_for_function("(t) => document.querySelector('.dpface-sample-id').innerText === t",
                                   arg=order[0], timeout=30_000)
            maps.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
            page.wait_for_timeout(500)
            assert maps.screenshot() != second, "the figure did not change with the sample"
            assert "rank 0 of 8" in page.locator(".dpface-sample").inner_text()

            heatmap = maps.locator(".js-plotly-plot .nsewdrag").nth(3)  # the error map
            box = heatmap.bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.move(box["x"] + box["width"] / 2 + 3, box["y"] + box["height"] / 2 + 3)
            hover = maps.locator(".hoverlayer .hovertext")
            hover.first.wait_for(timeout=10_000)
            assert "error" in (hover.first.text_content() or "")
            screenshot(page, "dashboard_worst_sample_hover")

            model.select_option("constant")
            page.wait_for_function("() => document.querySelector('.dpface-maps').innerText.includes('rerun')",
                                   timeout=30_000)
            assert "classical" in maps.inner_text()
            screenshot(page, "dashboard_run_without_predictions")
        finally:
            stop_process_group(process, timeout=15)
    assert process.poll() is not None
    assert [p for p in page.problems if OFFLINE_CDN not in p and "ERR_NAME_NOT_RESOLVED" not in p] == []
