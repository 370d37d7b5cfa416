"""Project-level invariants: the conda twin agrees with pyproject, notebooks are committed clean,
the README's two commands and CI stay what they claim."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from dpface_lib import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _conda_pip_lines() -> list[str]:
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml must have exactly one pip section"
    return pip_sections[0]


def test_environment_yml_agrees_with_pyproject() -> None:
    project = _pyproject()["project"]
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    conda_deps = [d for d in env["dependencies"] if isinstance(d, str)]
    python = [d for d in conda_deps if d.startswith("python")]
    assert python == ["python=3.11"], python
    assert project["requires-python"].startswith(">=3.11"), project["requires-python"]
    assert "pip" in conda_deps
    pip_lines = _conda_pip_lines()
    # the exact torch pins appear identically in both
    pins = {d for d in project["dependencies"] if re.match(r"^(torch|torchvision)==", d)}
    assert pins == {"torch==2.14.1", "torchvision==0.29.1"}
    assert pins == {line for line in pip_lines if re.match(r"^(torch|torchvision)==", line)}
    # the project itself is installed from the pip section with every extra pyproject defines
    extras = sorted(project.get("optional-dependencies", {}))
    editable = [line for line in pip_lines if line.startswith("-e .")]
    assert editable == [f"-e .[{','.join(extras)}]"], editable
    # nothing else is listed that pyproject does not know about
    assert set(pip_lines) == pins | set(editable)


def test_makefile_has_the_documented_targets() -> None:
    text = (REPO_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", text, flags=re.M))
    assert {"setup", "kernels", "pipeline", "test", "lab", "lint", "bench"} <= targets
    assert "torch==2.14.1 torchvision==0.29.1" in text


def test_ci_runs_only_what_the_readme_says() -> None:
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines()
                if line.strip() and not line.lstrip().startswith("#")
                and not line.startswith(("set ", "cd "))]
    # the README's command, and on an AVX-512 host the ISA-dependent tests as an AVX2-only CPU runs them
    assert commands[0] == "make test"
    isa_block = ["if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then", "make test-avx2", "fi"]
    assert commands[1:] in ([], isa_block)
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make pipeline" in readme and "make test" in readme


def test_pyproject_declares_console_script_and_pins() -> None:
    project = _pyproject()["project"]
    assert project["scripts"]["dpface"] == "dpface_lib.cli:main"
    names = {re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    for needed in ["torch", "torchvision", "numpy", "matplotlib", "pandas", "plotly", "ipywidgets",
                   "jupyterlab", "papermill", "nbval", "lightning", "tqdm", "pyyaml"]:
        assert needed in names, needed
    dev = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0] for d in project["optional-dependencies"]["dev"]}
    assert {"pytest", "ruff", "hypothesis"} <= dev


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs_and_have_parameters(notebook: Path) -> None:
    nb = json.loads(notebook.read_text())
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", notebook.name), "notebooks are named NN_topic.ipynb"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for i, cell in enumerate(code):
        assert cell.get("outputs") == [], f"{notebook.name}: code cell {i} has outputs"
        assert cell.get("execution_count") is None, f"{notebook.name}: code cell {i} has an execution count"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{notebook.name}: exactly one cell must be tagged 'parameters'"
    assert nb["cells"][0]["cell_type"] == "markdown", f"{notebook.name}: opens with a title cell"
    assert nb["metadata"]["kernelspec"]["name"] == "dpface"


def test_cli_dispatch_and_unknown_command(capsys) -> None:
    from dpface_lib.cli import main

    assert main(["--help"]) == 0
    assert "pipeline" in capsys.readouterr().out
    assert main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_pipeline_yaml_steps_match_their_notebooks(tmp_path: Path) -> None:
    from dpface_lib.pipeline import _resolve_parameters, load_pipeline

    runs = load_pipeline(REPO_ROOT / "pipeline.yaml")
    used = {run.notebook.name for run in runs}
    assert used == {nb.name for nb in NOTEBOOKS}, "every notebook runs in the pipeline"
    for run in runs:
        params = _resolve_parameters(run, tmp_path)  # raises on a parameter the notebook lacks
        assert "{run_dir}" not in json.dumps(params)
    models = {run.parameters["model"] for run in runs if run.step == "train"}
    assert {"psmnet", "dpnet", "stereonet", "nnet", "bts"} <= models
