"""Model registry: the models are listed here, in code; their hyper-parameters live in one config each.

:data:`MODELS` maps a name to its module (inside ``dpface_lib.models``) and class, imported only when the
model is built. ``dpface_lib/configs/<name>.yaml`` holds the constructor arguments of the full
configuration and per-profile overrides (e.g. ``tiny``), besides the training sections::

    model:
      args: {channels: 32, min_disp: -4.0, max_disp: 12.0}
    profiles:
      full: {model: {}}
      tiny: {model: {channels: 8}}

``build_model("psmnet", profile="tiny", max_disp=4.0)`` merges args <- profile overrides <- keyword
overrides, checks every name against the constructor's signature and builds the model. A new model is a
module, an entry in :data:`MODELS` (or :func:`register_model` for a class defined elsewhere) and a config.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import yaml
from torch import nn

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

#: Registered models: name -> (module inside dpface_lib.models, class name).
MODELS: dict[str, tuple[str, str]] = {
    "bts": ("bts", "BTS"),
    "dpnet": ("dpnet", "DPNet"),
    "nnet": ("nnet", "NNet"),
    "psmnet": ("psmnet", "PSMNet"),
    "stereodpnet": ("stereodpnet", "StereoDPNet"),
    "stereonet": ("stereonet", "StereoNet"),
}
_EXTRA: dict[str, type[nn.Module]] = {}  # register_model

__all__ = ["CONFIG_DIR", "MODELS", "ModelConfigError", "build_model", "list_models", "load_config",
           "model_args", "register_model"]


class ModelConfigError(ValueError):
    """A model name, profile, override or config file is invalid."""


def register_model(name: str, cls: type[nn.Module]) -> None:
    """Register ``cls`` under ``name`` (its config: ``CONFIG_DIR/<name>.yaml``); a name is taken once."""
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ModelConfigError(f"register_model({name!r}): {cls!r} is not an nn.Module class")
    if name in MODELS or name in _EXTRA:
        raise ModelConfigError(f"register_model: a model named {name!r} is already registered")
    _EXTRA[name] = cls


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted({*MODELS, *_EXTRA})


def load_config(name: str) -> dict[str, Any]:
    """The parsed config of model ``name`` (whole YAML, training sections included), validated.

    Raises:
        ModelConfigError: unknown name (the message lists the known ones) or a malformed file.
    """
    if not isinstance(name, str) or name not in list_models():
        raise ModelConfigError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ModelConfigError(f"{path}: the config of registered model {name!r} is missing")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ModelConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ModelConfigError(f"{path}: expected a mapping with a 'model:' section")
    model = data["model"]
    unknown = sorted(set(model) - {"args"})
    if unknown:
        raise ModelConfigError(f"{path}: unknown key(s) {['model.' + k for k in unknown]} (accepted: "
                               "model.args; the class is registered in dpface_lib.models.MODELS)")
    if "args" not in model:
        raise ModelConfigError(f"{path}: 'model.args' is missing")
    if not isinstance(model["args"], dict):
        raise ModelConfigError(f"{path}: 'model.args' must be a mapping, got {type(model['args']).__name__}")
    profiles = data.get("profiles", {}) or {}
    if not isinstance(profiles, dict):
        raise ModelConfigError(f"{path}: 'profiles' must be a mapping")
    for pname, prof in profiles.items():
        overrides = (prof or {}).get("model", {}) if isinstance(prof, dict) else None
        if not isinstance(overrides, dict | type(None)):
            raise ModelConfigError(f"{path}: 'profiles.{pname}.model' must be a mapping")
    return data


def _model_class(name: str) -> type[nn.Module]:
    if name in _EXTRA:
        return _EXTRA[name]
    module_name, class_name = MODELS[name]
    return getattr(importlib.import_module(f"{__name__}.{module_name}"), class_name)


def _accepted_args(cls: type) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return [
        p for p, v in params.items() if p != "self" and v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)
    ]


def model_args(name: str, profile: str = "full", **overrides: Any) -> dict[str, Any]:
    """Constructor arguments of model ``name``: ``model.args`` <- ``profiles.<profile>.model`` <- overrides.

    Raises:
        ModelConfigError: unknown model, profile or argument (the message lists what exists).
    """
    config = load_config(name)
    path = CONFIG_DIR / f"{name}.yaml"
    profiles = config.get("profiles", {}) or {}
    if profile != "full" and profile not in profiles:
        raise ModelConfigError(
            f"{path}: unknown profile {profile!r}; available: {', '.join(['full', *profiles])}"
        )
    args = dict(config["model"]["args"])
    args.update((profiles.get(profile) or {}).get("model") or {})
    cls = _model_class(name)
    accepted = _accepted_args(cls)
    bad = [k for k in args if k not in accepted]
    if bad:
        raise ModelConfigError(f"{path}: unknown argument(s) {bad} for {cls.__name__}; accepted: {accepted}")
    bad = [k for k in overrides if k not in accepted]
    if bad:
        raise ModelConfigError(
            f"unknown override(s) {bad} for model {name!r} ({cls.__name__}); accepted: {accepted}"
        )
    args.update(overrides)
    return args


def build_model(name: str, profile: str = "full", **overrides: Any) -> nn.Module:
    """Build model ``name`` with its ``profile`` configuration and keyword overrides of its arguments.

    Example: ``build_model("dpnet", profile="tiny")``; ``build_model("psmnet", max_disp=8.0)``. Its plain
    convolutions get :func:`dpface_lib.models.safeconv.guard_convs`'s float32 fallback for inputs smaller
    than the kernel (a CPU bfloat16 autocast defect).

    Raises:
        ModelConfigError: unknown model, profile or argument (the message lists what exists).
    """
    from dpface_lib.models.safeconv import guard_convs

    args = model_args(name, profile, **overrides)
    cls = _model_class(name)
    return guard_convs(cls(**args))
