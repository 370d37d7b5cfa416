"""Model registry: names from config files, profiles, overrides and their errors."""

from __future__ import annotations

import pytest
import torch

import dpface_lib.models as registry
from dpface_lib.models import ModelConfigError, build_model, list_models, load_config, model_args
from dpface_lib.models.blocks import count_parameters

BASELINES = ["psmnet", "dpnet", "stereonet", "nnet", "bts"]


def test_list_models_names_every_config():
    names = list_models()
    assert set(BASELINES) <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", BASELINES)
def test_configs_have_a_full_and_a_tiny_profile(name):
    config = load_config(name)
    assert config["model"]["module"] == f"dpface_lib.models.{name}"
    assert {"full", "tiny"} <= set(config["profiles"])
    tiny = model_args(name, "tiny")
    full = model_args(name, "full")
    assert tiny != full and set(tiny) == set(full)


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(ModelConfigError, match="unknown model 'resnet'.*psmnet"):
        build_model("resnet")
    with pytest.raises(ModelConfigError, match="unknown model"):
        load_config("../configs/psmnet")


def test_unknown_override_lists_the_accepted_arguments():
    with pytest.raises(
        ModelConfigError, match=r"unknown override\(s\) \['depth_bins'\].*accepted:.*max_disp"
    ):
        build_model("psmnet", depth_bins=3)


def test_unknown_profile_lists_the_profiles():
    with pytest.raises(ModelConfigError, match="unknown profile 'huge'.*tiny"):
        build_model("dpnet", profile="huge")


def test_profile_and_overrides_are_applied_in_order():
    assert model_args("psmnet", "tiny")["channels"] == 8
    assert model_args("psmnet", "tiny", channels=4)["channels"] == 4
    small = count_parameters(build_model("dpnet", profile="tiny", width=0.25))
    tiny = count_parameters(build_model("dpnet", profile="tiny"))
    assert small < tiny < count_parameters(build_model("dpnet"))
    model = build_model("stereonet", profile="tiny", max_disp=8.0)
    assert model.max_disp == 8.0 and model.bins[-1] < 8.0


def _write(tmp_path, name, text):
    (tmp_path / f"{name}.yaml").write_text(text)


def test_a_new_config_registers_a_model_without_code_changes(tmp_path, monkeypatch):
    """A model is one module + one config: a config alone (pointing at an existing module) is enough."""
    monkeypatch.setattr(registry, "CONFIG_DIR", tmp_path)
    _write(
        tmp_path,
        "mynet",
        """
model:
  module: dpface_lib.models.dpnet
  class: DPNet
  args: {width: 0.25}
profiles:
  tiny: {model: {width: 0.125}}
""",
    )
    _write(tmp_path, "notes", "just: text\n")  # not a model config
    assert list_models() == ["mynet"]
    model = build_model("mynet", profile="tiny")
    out = model(
        {
            "left": torch.rand(1, 3, 64, 64),
            "right": torch.rand(1, 3, 64, 64),
            "a": torch.tensor([-2.0e4]),
            "b": torch.tensor([25.0]),
        }
    )
    assert out["disparities"].shape == (1, 5, 64, 64)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: {module: dpface_lib.models.dpnet, args: {}}", "'model.class' is missing"),
        ("model: {module: os, class: DPNet, args: {}}", "inside dpface_lib.models"),
        ("model: {module: dpface_lib.models.dpnet, class: basic, args: {}}", "not an nn.Module"),
        (
            "model: {module: dpface_lib.models.dpnet, class: DPNet, args: {wdth: 1}}",
            r"broken.yaml: unknown arg",
        ),
        ("model: {module: dpface_lib.models.dpnet, class: DPNet, args: [1, 2]}", "must be a mapping"),
        ("model: [unclosed", "not valid YAML"),
    ],
)
def test_malformed_configs_name_the_file_and_the_problem(tmp_path, monkeypatch, text, message):
    monkeypatch.setattr(registry, "CONFIG_DIR", tmp_path)
    _write(tmp_path, "broken", text)
    with pytest.raises(ModelConfigError, match=message):
        build_model("broken")
