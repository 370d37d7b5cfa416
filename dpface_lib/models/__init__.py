"""Model registry: one config per model, one module per model.

A model named ``<name>`` is registered by a YAML file ``dpface_lib/configs/<name>.yaml`` whose ``model:``
section names the module (inside ``dpface_lib.models``), the class and the constructor arguments of the
full configuration; ``profiles.<profile>.model`` holds overrides of those arguments (e.g. ``tiny``)::

    model:
      module: dpface_lib.models.psmnet
      class: PSMNet
      args: {channels: 32, min_disp: -4.0, max_disp: 12.0}
    profiles:
      full: {model: {}}
      tiny: {model: {channels: 8}}

``build_model("psmnet", profile="tiny", max_disp=4.0)`` merges args <- profile overrides <- keyword
overrides, checks every name against the constructor's signature and builds the model. Nothing in this
file lists the models: adding a config and its module is enough.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import yaml
from torch import nn

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
_MODULE_PREFIX = "dpface_lib.models."

__all__ = ["CONFIG_DIR", "ModelConfigError", "build_model", "list_models", "load_config", "model_args"]


class ModelConfigError(ValueError):
    """A model name, profile, override or config file is invalid."""


def list_models() -> list[str]:
    """Names of the models whose config file exists (``dpface_lib/configs/<name>.yaml`` with a ``model:``
    section), sorted."""
    names = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            continue
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            names.append(path.stem)
    return names


def load_config(name: str) -> dict[str, Any]:
    """The parsed config of model ``name`` (whole YAML, training sections included), validated.

    Raises:
        ModelConfigError: unknown name (the message lists the known ones) or a malformed file.
    """
    path = CONFIG_DIR / f"{name}.yaml"
    if not isinstance(name, str) or "/" in name or "\\" in name or not path.is_file():
        raise ModelConfigError(
            f"unknown model {name!r}; available models: {', '.join(list_models()) or 'none'}"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ModelConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ModelConfigError(f"{path}: expected a mapping with a 'model:' section")
    model = data["model"]
    for key in ("module", "class", "args"):
        if key not in model:
            raise ModelConfigError(f"{path}: 'model.{key}' is missing")
    if not isinstance(model["module"], str) or not model["module"].startswith(_MODULE_PREFIX):
        raise ModelConfigError(
            f"{path}: 'model.module' must name a module inside {_MODULE_PREFIX}*, got {model['module']!r}"
        )
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


def _model_class(name: str, config: dict[str, Any]) -> type[nn.Module]:
    path = CONFIG_DIR / f"{name}.yaml"
    module_name, class_name = config["model"]["module"], config["model"]["class"]
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ModelConfigError(f"{path}: 'model.class' {class_name!r} is not an nn.Module in {module_name}")
    return cls


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
    cls = _model_class(name, config)
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

    Example: ``build_model("dpnet", profile="tiny")``; ``build_model("psmnet", max_disp=8.0)``.

    Raises:
        ModelConfigError: unknown model, profile or argument (the message lists what exists).
    """
    args = model_args(name, profile, **overrides)
    cls = _model_class(name, load_config(name))
    return cls(**args)
