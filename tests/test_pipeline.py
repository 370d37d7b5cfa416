"""The papermill pipeline runner: sweep expansion, outputs, failures, no silent overwrite."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nbformat
import pytest

from dpface_lib import pipeline
from dpface_lib.pipeline import PipelineError, load_pipeline, run_pipeline


def _notebook(path: Path, body: str, params: str = "x = 1\nout_dir = None") -> Path:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "dpface", "display_name": "Python (DP-Face kit)",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


WRITE_X = (
    "from pathlib import Path\n"
    "Path(out_dir).mkdir(parents=True, exist_ok=True)\n"
    "(Path(out_dir) / 'x.txt').write_text(repr(x))"
)


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    _notebook(tmp_path / "ok.ipynb", WRITE_X)
    _notebook(tmp_path / "fail.ipynb", "raise ValueError('bad value of x: %s' % x)")
    return tmp_path


def _write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_grid_expands_to_one_run_per_combination(project: Path) -> None:
    spec = _write_yaml(project / "p.yaml", """
steps:
  - name: a
    notebook: ok.ipynb
  - name: sweep
    notebook: ok.ipynb
    parameters: {x: 0}
    grid: {y: [1, 2, 3], z: [a, b]}
""")
    with pytest.raises(PipelineError, match="both in 'parameters' and 'grid'"):
        _write_yaml(project / "q.yaml", "steps:\n  - {name: s, notebook: ok.ipynb, parameters: {x: 1}, "
                    "grid: {x: [1, 2]}}\n")
        load_pipeline(project / "q.yaml")
    runs = load_pipeline(spec)
    assert [r.name for r in runs][:3] == ["a", "sweep__y-1_z-a", "sweep__y-1_z-b"]
    assert len(runs) == 1 + 3 * 2
    assert runs[-1].parameters == {"x": 0, "y": 3, "z": "b"}
    assert len({r.name for r in runs}) == len(runs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("steps: []\n", "non-empty list"),
        ("steps:\n  - {name: a}\n", "needs 'name' and 'notebook'"),
        ("steps:\n  - {name: a, notebook: missing.ipynb}\n", "not found"),
        ("steps:\n  - {name: a, notebook: ok.ipynb}\n  - {name: a, notebook: ok.ipynb}\n", "duplicate"),
        ("steps:\n  - {name: a, notebook: ok.ipynb, grid: {x: []}}\n", "non-empty list"),
        ("steps:\n  - {name: 'a b', notebook: ok.ipynb}\n", "name may only use"),
        ("stepz: []\n", "non-empty list"),
    ],
)
def test_invalid_pipeline_files_are_named(project: Path, text: str, message: str) -> None:
    spec = _write_yaml(project / "bad.yaml", text)
    with pytest.raises(PipelineError, match=message) as info:
        load_pipeline(spec)
    assert "bad.yaml" in str(info.value)


def test_run_writes_notebooks_summary_and_injects_parameters(project: Path) -> None:
    spec = _write_yaml(project / "p.yaml", """
parameters: {x: 5, unused_elsewhere: 1}
steps:
  - name: plain
    notebook: ok.ipynb
  - name: sweep
    notebook: ok.ipynb
    grid: {x: [7, 8]}
""")
    out = project / "runs" / "r1"
    # 'unused_elsewhere' is shared but declared by no notebook: silently not injected
    rows = run_pipeline(spec, out, cell_progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    for name, value in [("plain", 5), ("sweep__x-7", 7), ("sweep__x-8", 8)]:
        assert (out / f"{name}.ipynb").is_file()
        assert (out / name / "x.txt").read_text() == repr(value)
    with (out / "summary.csv").open() as fh:
        summary = list(csv.DictReader(fh))
    assert [row["step"] for row in summary] == ["plain", "sweep", "sweep"]
    assert json.loads(summary[1]["parameters"])["x"] == 7
    assert all(float(row["seconds"]) > 0 for row in summary)


def test_run_dir_placeholder_points_later_steps_at_this_run(project: Path) -> None:
    _notebook(project / "reader.ipynb", "from pathlib import Path\n"
              "assert (Path(source) / 'first' / 'x.txt').read_text() == '3'\n"
              "Path(out_dir).mkdir(parents=True)\n(Path(out_dir) / 'seen.txt').write_text(source)",
              params="source = ''\nout_dir = None")
    spec = _write_yaml(project / "p.yaml", """
steps:
  - {name: first, notebook: ok.ipynb, parameters: {x: 3}}
  - {name: second, notebook: reader.ipynb, parameters: {source: '{run_dir}'}}
""")
    out = project / "out"
    run_pipeline(spec, out, cell_progress=False)
    assert (out / "second" / "seen.txt").read_text() == str(out)


def test_overrides_win_and_reach_only_notebooks_that_declare_them(project: Path) -> None:
    spec = _write_yaml(project / "p.yaml", "steps:\n  - {name: a, notebook: ok.ipynb, parameters: {x: 3}}\n")
    out = project / "out"
    rows = run_pipeline(spec, out, overrides={"x": 9, "undeclared": 1}, cell_progress=False)
    assert (out / "a" / "x.txt").read_text() == "9"
    assert json.loads(rows[0]["parameters"]) == {"x": 9, "out_dir": str(out.resolve() / "a")}


def test_unknown_parameter_is_rejected_before_running(project: Path) -> None:
    spec = _write_yaml(project / "p.yaml",
                       "steps:\n  - {name: a, notebook: ok.ipynb, parameters: {nope: 1}}\n")
    with pytest.raises(PipelineError, match=r"has no parameter\(s\) \['nope'\]"):
        run_pipeline(spec, project / "out", cell_progress=False)


def test_failure_names_notebook_and_cell_and_keeps_partial_output(project: Path) -> None:
    spec = _write_yaml(project / "p.yaml", """
steps:
  - {name: first, notebook: ok.ipynb}
  - {name: broken, notebook: fail.ipynb, parameters: {x: 3}}
  - {name: never, notebook: ok.ipynb}
""")
    out = project / "out"
    with pytest.raises(PipelineError) as info:
        run_pipeline(spec, out, cell_progress=False)
    message = str(info.value)
    assert "fail.ipynb" in message and "cell" in message and "bad value of x: 3" in message
    assert (out / "broken.ipynb").is_file(), "partial output notebook must be kept"
    partial = nbformat.read(out / "broken.ipynb", as_version=4)
    assert any(o.get("ename") == "ValueError" for c in partial.cells for o in c.get("outputs", []))
    with (out / "summary.csv").open() as fh:
        status = {row["step"]: row["status"] for row in csv.DictReader(fh)}
    assert status == {"first": "ok", "broken": "failed"}
    assert not (out / "never.ipynb").exists()


def test_existing_run_is_never_overwritten_and_resume_skips_finished(project: Path, monkeypatch) -> None:
    spec = _write_yaml(project / "p.yaml", "steps:\n  - {name: a, notebook: ok.ipynb}\n"
                       "  - {name: b, notebook: ok.ipynb}\n")
    out = project / "out"
    run_pipeline(spec, out, only=["a"], cell_progress=False)
    with pytest.raises(PipelineError, match="already exists"):
        run_pipeline(spec, out, cell_progress=False)
    executed: list[str] = []
    real = pipeline._resolve_parameters

    def spy(run, out_dir, overrides=None, **kwargs):
        executed.append(run.name)
        return real(run, out_dir, overrides, **kwargs)

    monkeypatch.setattr(pipeline, "_resolve_parameters", spy)
    rows = run_pipeline(spec, out, resume=True, cell_progress=False)
    assert executed == ["b"]
    assert sorted(r["step"] for r in rows) == ["a", "b"]


def test_cli_lists_runs(project: Path, capsys) -> None:
    spec = _write_yaml(project / "p.yaml", "steps:\n  - {name: s, notebook: ok.ipynb, grid: {x: [1, 2]}}\n")
    assert pipeline.cli([str(spec), "--out", str(project / "o"), "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["s__x-1", "s__x-2"]
    assert pipeline.cli([str(spec), "--out", str(project / "o"), "--only", "zzz"]) == 2


def test_dataset_section_is_generated_once_and_fills_its_placeholder(project: Path, monkeypatch) -> None:
    calls: list[dict] = []

    def fake_cached_dataset(options, cache_dir, **kwargs):
        calls.append(dict(options))
        return Path("/data/teach-abc")

    monkeypatch.setattr("dpface_lib.simulate.cache.cached_dataset", fake_cached_dataset)
    spec = _write_yaml(project / "p.yaml", """
dataset: {persons: 3, size: 64x64}
steps:
  - {name: a, notebook: ok.ipynb, parameters: {x: "{dataset}/train.txt"}}
  - {name: b, notebook: ok.ipynb}
""")
    run_pipeline(spec, project / "out", cell_progress=False)
    assert calls == [{"persons": 3, "size": "64x64"}]
    assert (project / "out" / "a" / "x.txt").read_text() == repr("/data/teach-abc/train.txt")
    assert (project / "out" / "b" / "x.txt").read_text() == "1"
    bad = _write_yaml(project / "bad.yaml", "dataset: {persons: 3, colour: red}\nsteps:\n"
                      "  - {name: a, notebook: ok.ipynb}\n")
    with pytest.raises(PipelineError, match="colour"):
        run_pipeline(bad, project / "out2", cell_progress=False)


def test_leaderboard_written_after_each_step(project: Path) -> None:
    body = ("import pandas as pd\nfrom pathlib import Path\n"
            "Path(out_dir).mkdir(parents=True, exist_ok=True)\n"
            "pd.DataFrame({'model': ['m'] * 2, 'sample_id': ['s1', 's2'], 'ai1': [x, 3 * x]})"
            ".to_csv(Path(out_dir) / 'per_sample.csv', index=False)\n"
            "(Path(out_dir) / 'run_info.json').write_text('{\"train_seconds\": 12.5}')")
    _notebook(project / "table.ipynb", body)
    spec = _write_yaml(project / "p.yaml",
                       "steps:\n  - {name: t, notebook: table.ipynb, parameters: {x: 0.5}}\n")
    run_pipeline(spec, project / "out", cell_progress=False)
    with (project / "out" / "leaderboard.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["model", "n", "ai1", "ai2", "spearman", "relief_ai1", "relief_corr", "inverted",
                             "absrel", "mean_deg", "train_seconds"]
    assert rows[0]["model"] == "m" and rows[0]["n"] == "2" and float(rows[0]["ai1"]) == pytest.approx(1.0)
    assert float(rows[0]["train_seconds"]) == 12.5 and rows[0]["mean_deg"] == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &x [1, 2]\nb: *x\nsteps:\n  - {name: s, notebook: ok.ipynb}\n",
         "line 1: YAML anchors and aliases"),
        # the "billion laughs" shape: nine levels of nine aliases would expand to 9**9 values
        ("l0: &a0 [x]\n" + "".join(f"l{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))
         + "steps:\n  - {name: s, notebook: ok.ipynb}\n", "line 1: YAML anchors"),
        ("steps:\n  - {name: s, notebook: ok.ipynb}\n" + "# padding\n" * 30000, "bytes; the limit is 262144"),
        ("- just\n- a list\n", "expected a mapping at the top level, found list"),
        ("steps: [\n", "cannot read pipeline file"),
        ("steps:\n  - {name: s, notebook: ok.ipynb, grid: {model: ['a b', 'a-b']}}\n",
         "grid values {'model': 'a b'} and {'model': 'a-b'} both give the run name 's__model-a-b'"),
        ("steps:\n  - {name: s, notebook: ok.ipynb, grid: {x: [1, '1']}}\n",
         "both give the run name 's__x-1'"),
    ],
    ids=["alias", "alias_bomb", "too_large", "not_a_mapping", "bad_yaml", "slug_collision", "type_collision"],
)
def test_pipeline_file_guards(project: Path, text: str, message: str) -> None:
    spec = _write_yaml(project / "guarded.yaml", text)
    with pytest.raises(PipelineError, match="guarded.yaml") as info:
        load_pipeline(spec)
    assert message in str(info.value)
    assert pipeline.cli([str(spec), "--out", str(project / "never")]) == 2
    assert not (project / "never").exists()


def test_fuzz_pipeline_files_fail_only_with_pipeline_error(project: Path) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    pieces = st.sampled_from(["steps:", "\n", "  - ", "{name: s, notebook: ok.ipynb}", "grid: {x: [1, 2]}",
                              "&a ", "*a", "!!python/name:os.system", "[", "]", "{", "}", ": ", "'", "\t",
                              "parameters:", "dataset:", "0", "null", "\x00", "é",
                              "notebook: 3", "parameters: [1]", "{1: 2}"])

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
              derandomize=True)  # the same examples in every CI run
    @given(st.lists(pieces, max_size=25))
    def check(parts: list[str]) -> None:
        spec = project / "fuzz.yaml"
        spec.write_text("".join(parts), encoding="utf-8")
        try:
            runs = load_pipeline(spec)
        except PipelineError as err:
            assert "fuzz.yaml" in str(err)
        else:
            assert runs and len({run.name for run in runs}) == len(runs)

    check()


DIE_ONCE = (
    "import os\n"
    "from pathlib import Path\n"
    "marker = Path(out_dir) / 'died_once'\n"
    "Path(out_dir).mkdir(parents=True, exist_ok=True)\n"
    "if not marker.exists():\n"
    "    marker.write_text('1')\n"
    "    os._exit(1)  # the kernel process ends mid-cell\n"
    "(Path(out_dir) / 'x.txt').write_text(repr(x))"
)


def test_a_kernel_that_dies_is_started_again_once(project: Path, capsys) -> None:
    _notebook(project / "die_once.ipynb", DIE_ONCE)
    spec = _write_yaml(project / "p.yaml", "steps:\n  - {name: flaky, notebook: die_once.ipynb, "
                       "parameters: {x: 5, out_dir: '{run_dir}/flaky'}}\n")
    out = project / "out"
    rows = run_pipeline(spec, out, cell_progress=False)
    assert [r["status"] for r in rows] == ["ok"]
    assert (out / "flaky" / "died_once").is_file() and (out / "flaky" / "x.txt").read_text() == "5"
    assert "kernel died; starting it again (2 of 2)" in capsys.readouterr().err


def test_a_cell_past_the_timeout_fails_the_step_after_the_retry(project: Path, capsys) -> None:
    _notebook(project / "hang.ipynb", "import time\ntime.sleep(60)")
    spec = _write_yaml(project / "p.yaml", "steps:\n  - {name: stuck, notebook: hang.ipynb}\n")
    out = project / "out"
    with pytest.raises(PipelineError) as info:
        run_pipeline(spec, out, cell_progress=False, cell_timeout=2.0, retries=1)
    message = str(info.value)
    assert "'stuck'" in message and "cell-timeout" in message and "2 attempt(s)" in message
    assert "--resume" in message and "starting it again (2 of 2)" in capsys.readouterr().err
    with (out / "summary.csv").open() as fh:
        assert [row["status"] for row in csv.DictReader(fh)] == ["failed"]
