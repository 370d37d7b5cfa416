"""Model registry: the models registered in code, their configs, profiles, overrides and their errors."""

from __future__ import annotations

import pytest
import torch

import dpface_lib.models as registry
from dpface_lib.models import ModelConfigError, build_model, list_models, load_config, model_args
from dpface_lib.models.blocks import count_parameters

BASELINES = ["psmnet", "dpnet", "stereonet", "nnet", "bts"]


def test_list_models_names_every_registered_model_and_each_has_a_config():
    names = list_models()
    assert set(BASELINES) | {"stereodpnet"} == set(names) == set(registry.MODELS)
    assert names == sorted(names)
    assert {p.stem for p in registry.CONFIG_DIR.glob("*.yaml")} == set(names)


@pytest.mark.parametrize("name", BASELINES)
def test_configs_have_a_full_and_a_tiny_profile(name):
    config = load_config(name)
    assert set(config["model"]) == {"args"}
    assert {"full", "tiny"} <= set(config["profiles"])
    tiny = model_args(name, "tiny")
    full = model_args(name, "full")
    assert set(tiny) == set(full)
    # a teaching network is never larger than the paper's (DPNet's is the paper's: its full width is cheap)
    assert count_parameters(build_model(name, profile="tiny")) <= count_parameters(build_model(name))


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
    tiny_channels = load_config("psmnet")["profiles"]["tiny"]["model"]["channels"]
    assert tiny_channels != model_args("psmnet", "full")["channels"]
    assert model_args("psmnet", "tiny")["channels"] == tiny_channels
    assert model_args("psmnet", "tiny", channels=4)["channels"] == 4
    small = count_parameters(build_model("psmnet", profile="tiny", channels=4))
    tiny = count_parameters(build_model("psmnet", profile="tiny"))
    assert small < tiny < count_parameters(build_model("psmnet"))
    assert model_args("dpnet", "tiny", width=0.25)["width"] == 0.25
    model = build_model("stereonet", profile="tiny", max_disp=8.0)
    assert model.max_disp == 8.0 and model.bins[-1] < 8.0


def _write(tmp_path, name, text):
    (tmp_path / f"{name}.yaml").write_text(text)


def test_register_model_adds_a_class_with_its_config(tmp_path, monkeypatch):
    """A model defined outside the kit: register_model(name, class) + a config with its arguments."""
    from dpface_lib.models.dpnet import DPNet

    monkeypatch.setattr(registry, "CONFIG_DIR", tmp_path)
    monkeypatch.setattr(registry, "_EXTRA", {})
    _write(tmp_path, "mynet", "model:\n  args: {width: 0.25}\nprofiles:\n  tiny: {model: {width: 0.125}}\n")
    registry.register_model("mynet", DPNet)
    assert "mynet" in list_models()
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
    with pytest.raises(ModelConfigError, match="already registered"):
        registry.register_model("dpnet", DPNet)
    with pytest.raises(ModelConfigError, match="not an nn.Module"):
        registry.register_model("other", dict)
    registry.register_model("noconfig", DPNet)
    with pytest.raises(ModelConfigError, match="noconfig.yaml: the config of registered model"):
        build_model("noconfig")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: {module: dpface_lib.models.dpnet, class: DPNet, args: {}}", r"unknown key\(s\).*class"),
        ("model: {}", "'model.args' is missing"),
        ("model: {args: {wdth: 1}}", r"dpnet.yaml: unknown arg"),
        ("model: {args: [1, 2]}", "must be a mapping"),
        ("model: [unclosed", "not valid YAML"),
    ],
)
def test_malformed_configs_name_the_file_and_the_problem(tmp_path, monkeypatch, text, message):
    monkeypatch.setattr(registry, "CONFIG_DIR", tmp_path)
    _write(tmp_path, "dpnet", text)  # the config of a registered model
    with pytest.raises(ModelConfigError, match=message):
        build_model("dpnet")


def test_disparity_levels_follow_the_upsampling_convention():
    from dpface_lib.models.blocks import disparity_levels

    # align_corners=False (the baselines): max_disp is never a level; quarter resolution of -4..12 px
    assert disparity_levels(-4.0, 12.0, 8, scale=4) == [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    # align_corners=True (StereoDPNet): both ends, the values of torch.linspace
    assert disparity_levels(-4.0, 12.0, 5, align_corners=True) == [-4.0, 0.0, 4.0, 8.0, 12.0]
    model = build_model("stereodpnet", profile="tiny")
    levels = model.level_disparities.tolist()
    assert levels[0] == model.min_disp and levels[-1] == model.max_disp
