"""Training configuration: the schema of a profile's ``data:`` and ``train:`` sections with defaults,
validation that names the file and dotted key, merging, and the one KEY=VALUE override parser that
``dpface train --set`` and ``dpface pipeline --set`` share.

Configs live in ``dpface_lib/configs/<model>.yaml``: a ``model:`` section (constructor arguments) and
``profiles:`` (``full`` = the benchmark's settings, ``tiny`` = minutes on a CPU), each with optional ``data:``
and ``train:`` sections merged over :data:`DEFAULTS` by :func:`training_config`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from dpface_lib.models import CONFIG_DIR, load_config

__all__ = ["DEFAULTS", "ConfigError", "merge", "native_bf16", "parse_key_value", "parse_overrides",
           "resolve_precision", "set_dotted", "training_config"]

#: Every accepted key of a profile's ``data:`` and ``train:`` sections with its default.
DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "train_split": "train",
        "val_split": "auto",            # auto: val.txt where the set has one (the teaching set), else test
                                        # (the benchmark has no separate validation split)
        "val_subset": None,             # validate on this many evenly spaced samples of val_split (None: all)
        "lights": None,                 # e.g. [1]: the benchmark trains on light 1 only
        "batch_size": 4,
        "eval_batch_size": 2,
        "num_workers": 0,
        "pack": False,                  # read decoded views from a dpface_lib.pack (built on first use)
        "crop": {"mode": "random", "size": None, "ratio": 0.75, "multiple": 96},
        "eval_crop": {"mode": "center", "size": None, "ratio": 1.0, "multiple": 96},
        "photometric": {"lighting": None, "brightness": None, "contrast": None, "gamma": None},
    },
    "train": {
        "optimizer": {"name": "adam", "lr": 1.0e-4, "betas": [0.9, 0.999], "eps": 1.0e-5, "weight_decay": 0.0,
                      "momentum": 0.9},
        "scheduler": {"name": "step", "step_size": 35, "gamma": 0.5, "interval": "epoch", "eta_min": 0.0,
                      "warmup_steps": 0},
        "max_epochs": 75,
        "max_steps": -1,
        "loss_lambdas": None,           # {term: lambda} over the model's own loss_terms
        "precision": "32-true",        # Lightning's; "auto": bf16-mixed where bf16 is native, else 32-true
        "gradient_clip_val": None,
        "val_every_n_epochs": 1,
        "val_every_n_steps": None,      # validate every N optimiser steps instead of per epoch
        "limit_val_batches": 1.0,
        "log_every_n_steps": 10,
        "checkpoint_every_n_steps": None,   # also at every epoch end and at the end of training
        "keep_epoch_checkpoints": False,
        "deterministic": False,
        "sync_batchnorm": False,        # BatchNorm statistics over all processes (DDP), as one big batch
    },
}

#: Accepted types of the keys whose default is None (others: the default's type; an int passes for a float).
_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    "data.lights": (list,), "data.val_subset": (int,), "data.crop.size": (list,),
    "data.eval_crop.size": (list,),
    "data.photometric.lighting": (list,), "data.photometric.brightness": (list,),
    "data.photometric.contrast": (list,), "data.photometric.gamma": (list,),
    "train.loss_lambdas": (dict,), "train.gradient_clip_val": (float, int),
    "train.checkpoint_every_n_steps": (int,), "train.val_every_n_steps": (int,),
    "train.limit_val_batches": (float, int),
    "train.precision": (str, int),
}
_CHOICES = {
    "data.crop.mode": ("random", "center", "none"), "data.eval_crop.mode": ("random", "center", "none"),
    "train.optimizer.name": ("adam", "adamw", "sgd", "rmsprop"),
    "train.scheduler.name": ("step", "exponential", "cosine", "constant"),
    "train.scheduler.interval": ("epoch", "step"),
}


class ConfigError(ValueError):
    """A training config is invalid; the message names the file and the key."""



def check_section(section: Any, default: Any, key: str, shown: str, source: str) -> None:
    """Validate ``section`` against ``default``; ``key`` is its dotted path in :data:`DEFAULTS`
    (``data.crop``), ``shown`` the path reported in messages (``profiles.tiny.data.crop``)."""
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: '{shown}' must be a mapping, got {type(section).__name__}")
    for name, value in section.items():
        path, where = f"{key}.{name}".lstrip("."), f"{shown}.{name}"
        if name not in default:
            raise ConfigError(f"{source}: unknown key '{where}'; accepted: {', '.join(sorted(default))}")
        ref = default[name]
        if isinstance(ref, dict):
            check_section(value, ref, path, where, source)
            continue
        if value is None:
            continue
        types = _OPTIONAL_TYPES.get(path) or ((float, int) if isinstance(ref, float) else (type(ref),))
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{source}: '{where}' must be {names}, got {value!r} ({type(value).__name__})")
        if path in _CHOICES and value not in _CHOICES[path]:
            raise ConfigError(f"{source}: '{where}' must be one of {_CHOICES[path]}, got {value!r}")


def merge(base: dict, extra: Mapping) -> dict:
    """Deep copy of ``base`` with ``extra`` merged in (mappings recursively, everything else replaced)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def training_config(name: str, profile: str = "full", overrides: Mapping | None = None) -> dict[str, Any]:
    """The validated ``{"data": ..., "train": ...}`` training config of model ``name`` and ``profile``.

    Merge order: :data:`DEFAULTS` <- ``profiles.full`` <- ``profiles.<profile>`` <- ``overrides`` (a nested
    mapping such as ``{"train": {"optimizer": {"lr": 1e-3}}}``). Unknown keys, wrong types and unknown choices
    raise :class:`ConfigError` naming the config file and the dotted key.
    """
    config = load_config(name)
    source = str(CONFIG_DIR / f"{name}.yaml")
    profiles = config.get("profiles") or {}
    if profile != "full" and profile not in profiles:
        raise ConfigError(f"{source}: unknown profile {profile!r}; available: {sorted({'full', *profiles})}")
    merged = copy.deepcopy(DEFAULTS)
    for pname in dict.fromkeys(("full", profile)):
        section = profiles.get(pname) or {}
        for key in section:
            if key not in ("model", "data", "train"):
                raise ConfigError(f"{source}: unknown key 'profiles.{pname}.{key}'; "
                                  "accepted: model, data, train")
        for key in ("data", "train"):
            if section.get(key) is not None:
                check_section(section[key], DEFAULTS[key], key, f"profiles.{pname}.{key}", source)
                merged[key] = merge(merged[key], section[key])
    if overrides:
        check_section(dict(overrides), DEFAULTS, "", "overrides", "override")
        merged = merge(merged, overrides)
    check_section(merged, DEFAULTS, "", "config", source)
    return merged


def native_bf16(device_type: str, cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether bfloat16 matrix products run in hardware on ``device_type`` ("cpu" or "cuda").

    CUDA: :func:`torch.cuda.is_bf16_supported`. CPU: the x86 flags ``avx512_bf16`` or ``amx_bf16`` in
    ``cpuinfo`` (Linux), *and* the ISA limits of the environment leave them usable: torch's kernels at AVX-512
    (``ATEN_CPU_CAPABILITY``) and oneDNN at ``AVX512_CORE_BF16`` or above (``ONEDNN_MAX_CPU_ISA``), see
    :func:`dpface_lib.hostinfo.usable_bf16`. Without them oneDNN emulates bfloat16, which is slower than
    float32, so the answer is False there and on every other CPU.
    """
    from dpface_lib.hostinfo import usable_bf16

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    return usable_bf16(cpuinfo)


def resolve_precision(precision: str | int, accelerator: str = "auto") -> str | int:
    """Lightning's ``precision`` for a run: ``train.precision`` itself, except ``"auto"``.

    ``"auto"`` becomes ``"bf16-mixed"`` where :func:`native_bf16` holds for the device that ``accelerator``
    picks ("auto" picks CUDA when it is available), else ``"32-true"``. Mixed precision keeps the weights,
    the optimiser and the losses in float32 and runs the convolutions in bfloat16: on a CPU with AVX512-BF16
    a tiny-profile training step of a disparity model takes 0.65-0.8x the float32 time (docs/benchmarks.md).
    """
    if precision != "auto":
        return precision
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if native_bf16("cuda" if gpu else "cpu") else "32-true"


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """``tree["a"]["b"] = value`` for ``dotted`` = ``"a.b"``, creating the intermediate mappings."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def parse_key_value(text: str, option: str = "--set") -> tuple[str, Any]:
    """``"train.optimizer.lr=1e-3"`` -> ``("train.optimizer.lr", 0.001)``: the value is read as YAML (safe
    loader: numbers, booleans, lists, strings; no tags). Raises :class:`ConfigError` naming ``option``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{option} expects KEY=VALUE (e.g. train.optimizer.lr=1e-3), got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{option} {text!r}: the value is not valid YAML ({detail})") from exc


def parse_overrides(items: list[str], option: str = "--set") -> dict[str, Any]:
    """Nested override mapping from ``KEY=VALUE`` items with dotted keys (later items win)."""
    tree: dict[str, Any] = {}
    for item in items:
        key, value = parse_key_value(item, option)
        set_dotted(tree, key, value)
    return tree
