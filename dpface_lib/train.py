"""Training engine: a LightningModule around any registered model, the data module, the schedule, the loop.

One call trains a model on a dataset in the benchmark layout::

    from dpface_lib.train import train_model
    from dpface_lib.checkpoint import load_model
    result = train_model("dpnet", data_root="data_samples", out_dir="runs/dpnet", profile="tiny")
    model = load_model(result["checkpoint"])            # nn.Module in eval mode, built from the checkpoint

or from the shell: ``dpface train --model dpnet --profile tiny --data-root data_samples --out runs/dpnet``.

The pieces it uses each live in their own module: the ``data:``/``train:`` schema, merging and ``--set``
parsing in :mod:`dpface_lib.config` (``full`` = the benchmark's settings of Kang et al., ECCV 2022;
``tiny`` = minutes on a CPU); the loaders in :mod:`dpface_lib.datamodule` (seeded sample order and RNG
state in :mod:`dpface_lib.sampling`, crops and photometric jitter in :mod:`dpface_lib.transforms`); the
checkpoint format, atomic writes and weights-only reads in :mod:`dpface_lib.checkpoint`; the validation
metrics in :mod:`dpface_lib.metrics`.

Exact resume: the order of training samples and the seed of every sample's augmentation depend only on
(seed, global step), the schedule is a function of the global step, and the checkpoint carries the
optimiser, scheduler and RNG states, so training N steps, stopping and resuming for N more gives the same
weights as 2N steps in one go (single process).

Scale-out is Lightning's: ``devices``, ``strategy`` ("ddp"), ``num_nodes`` and ``accelerator`` pass through to
:class:`lightning.pytorch.Trainer` (see docs/training.md for torchrun and SLURM).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger

from dpface_lib.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_KEY,
    AtomicCheckpointIO,
    SaveLastCheckpoint,
    plain,
)
from dpface_lib.config import ConfigError, parse_overrides, resolve_precision, set_dotted, training_config
from dpface_lib.datamodule import DPFaceDataModule
from dpface_lib.losses import model_loss
from dpface_lib.metrics import batch_metrics
from dpface_lib.models import build_model, model_args
from dpface_lib.models.blocks import at_least_float32
from dpface_lib.sampling import rng_state, set_rng_state

__all__ = ["DPFaceDataModule", "DPFaceModule", "cli", "train_model"]  # the data module is re-exported


# ------------------------------------------------------------------------------------------------ module
def _lr_lambda(cfg: Mapping[str, Any], steps_per_epoch: int, total_steps: int, base_lr: float):
    """Multiplier of the base learning rate after ``step`` optimiser steps (a pure function of the step, so a
    resumed run follows the same schedule). With ``interval: epoch`` the schedule moves only at epoch ends;
    ``warmup_steps`` > 0 ramps the multiplier linearly from 1/warmup over the first optimiser steps."""
    name, gamma, step_size = cfg["name"], float(cfg["gamma"]), max(1, int(cfg["step_size"]))
    warmup = int(cfg["warmup_steps"])
    per_epoch = cfg["interval"] == "epoch"
    floor = float(cfg["eta_min"]) / base_lr if base_lr > 0 else 0.0

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * scheduled(step) if warmup > 0 else scheduled(step)

    def scheduled(step: int) -> float:
        t = step // steps_per_epoch if per_epoch else step
        if name == "step":
            return gamma ** (t // step_size)
        if name == "exponential":
            return gamma**t
        if name == "cosine":
            span = max(1, total_steps // steps_per_epoch if per_epoch else total_steps)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(t / span, 1.0)))
        return 1.0

    return factor


#: Per-epoch validation metrics that are logged (when the model predicts what they need).
VAL_METRICS = ("ai1", "ai2", "spearman", "absrel", "rmse", "delta1", "mean_deg")


class DPFaceModule(pl.LightningModule):
    """Trains registered model ``name`` (:func:`dpface_lib.models.build_model`) with its own loss.

    The loss is :func:`dpface_lib.losses.model_loss` with the model's ``loss_terms`` (smooth-L1 on all
    disparity outputs weighted by the model's ``loss_weights``; SILog on depth for BTS; cosine on normals
    where predicted), each multiplied by ``train.loss_lambdas`` where given. Logs ``train/loss`` (+ each term)
    per step and epoch, and ``val/loss`` and ``val/<metric>`` (:data:`VAL_METRICS`) per epoch.
    """

    def __init__(self, name: str, profile: str = "full", model_overrides: Mapping[str, Any] | None = None,
                 config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.model_name, self.profile = name, profile
        self.model_kwargs = dict(model_args(name, profile, **dict(model_overrides or {})))
        self.config = copy.deepcopy(dict(config)) if config is not None else training_config(name, profile)
        self.model = build_model(name, "full", **self.model_kwargs)
        self.save_hyperparameters({"model": name, "profile": profile, "model_args": plain(self.model_kwargs),
                                   "config": plain(self.config)})
        terms = dict(getattr(self.model, "loss_terms", {"smooth_l1": 1.0}))
        lambdas = self.config["train"]["loss_lambdas"] or {}
        # every disparity model may also use Garg et al.'s affine-invariant term and its disparity's normals
        allowed = {*terms, *(("affine_l1", "disparity_normal") if "smooth_l1" in terms else ())}
        unknown = sorted(set(lambdas) - allowed)
        if unknown:
            raise ConfigError(f"train.loss_lambdas names {unknown}, but model {name!r} uses only "
                              f"{sorted(allowed)}")
        self.loss_terms = {term: float(lam) for term, lam in {**terms, **lambdas}.items()}
        self.loss_weights = list(getattr(self.model, "loss_weights", [1.0]))

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The model's outputs, floating tensors in float32 or wider: under mixed precision (``bf16-mixed``)
        the network runs in bfloat16, whose 8-bit mantissa would round a 1 px disparity to 0.004 px steps
        inside the losses' per-sample affine fits and the metrics; those are computed in float32 instead."""
        outputs = self.model(batch)
        return {k: at_least_float32(v) if torch.is_tensor(v) else v for k, v in outputs.items()}

    def _loss(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if "disparities" not in outputs and "disparity" in outputs:
            outputs = {**outputs, "disparities": outputs["disparity"].unsqueeze(1)}
        weights = self.loss_weights
        if "disparities" in outputs and outputs["disparities"].shape[1] == 1:
            weights = [1.0]  # a single output (e.g. eval mode) gets weight 1, as in the benchmark code
        return model_loss(outputs, batch, self.loss_terms, weights)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        parts = self._loss(self(batch), batch)
        size = batch["left"].shape[0]
        self.log("train/loss", parts["loss"], prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        for term, value in parts.items():
            if term != "loss" and len(parts) > 2:
                self.log(f"train/{term}", value, on_step=True, on_epoch=True, batch_size=size)
        return parts["loss"]

    def _evaluate(self, batch: Mapping[str, Any], stage: str) -> None:
        outputs = self(batch)
        size = batch["left"].shape[0]
        self.log(f"{stage}/loss", self._loss(outputs, batch)["loss"], batch_size=size, sync_dist=True)
        metrics = batch_metrics(outputs, batch, allow_empty=True)
        for key in VAL_METRICS:
            values = metrics[key]
            finite = torch.isfinite(values)
            if finite.any():
                self.log(f"{stage}/{key}", values[finite].mean().float(), batch_size=int(finite.sum()),
                         prog_bar=key == "ai1", sync_dist=True)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_train_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, DPFaceDataModule):
            datamodule.place_sampler()

    def _steps_per_epoch(self) -> int:
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, DPFaceDataModule) and datamodule.train_sampler is not None:
            return datamodule.steps_per_epoch(self.trainer.world_size)
        return max(1, int(self.trainer.num_training_batches))

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.config["train"]["optimizer"]
        params = [p for p in self.parameters() if p.requires_grad]
        name, lr, wd = cfg["name"], float(cfg["lr"]), float(cfg["weight_decay"])
        if name in ("adam", "adamw"):
            cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
            optimizer = cls(params, lr=lr, betas=tuple(cfg["betas"]), eps=float(cfg["eps"]), weight_decay=wd)
        elif name == "sgd":
            optimizer = torch.optim.SGD(params, lr=lr, momentum=float(cfg["momentum"]), weight_decay=wd)
        else:
            optimizer = torch.optim.RMSprop(params, lr=lr, eps=float(cfg["eps"]), weight_decay=wd)
        steps_per_epoch = self._steps_per_epoch()
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else steps_per_epoch
        factor = _lr_lambda(self.config["train"]["scheduler"], steps_per_epoch, total, lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def checkpoint_meta(self) -> dict[str, Any]:
        """What :func:`load_model` needs to rebuild the network (plain containers only)."""
        return {"format": CHECKPOINT_FORMAT, "model": self.model_name, "profile": self.profile,
                "model_args": plain(self.model_kwargs), "config": plain(self.config)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.checkpoint_meta()
        checkpoint["rng_states"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            set_rng_state(checkpoint["rng_states"])

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop at the first non-finite gradient, naming the parameter, before it reaches the weights (the
        last checkpoint stays the step before). Float16 runs are exempt: their scaler skips such steps."""
        if str(self.trainer.precision).startswith("16"):
            return
        grads = [(name, p.grad.detach()) for name, p in self.named_parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm  # one fused pass (0.6 ms for DPNet's 382 tensors, 1.8 ms a loop)
        if grads and not bool(torch.isfinite(norm([g for _, g in grads], foreach=True))):
            name = next((n for n, g in grads if not bool(torch.isfinite(g.float().norm()))), grads[0][0])
            raise ValueError(f"training step {self.global_step}: the gradient of {name} is not finite "
                             f"(precision {self.trainer.precision}); rerun with train.precision=32-true to "
                             "tell a numerical defect from a diverging learning rate")


# --------------------------------------------------------------------------------------------- entry points
#: Lightning warnings that do not apply here: the CSV log is appended to on resume, the data order is resumed
#: mid-epoch by StepSampler, short tiny runs log more often than an epoch is long, few workers on CPU.
_EXPECTED_WARNINGS = (
    ".*Experiment logs directory.*", ".*resuming from a checkpoint that ended before the epoch ended.*",
    ".*smaller than the logging interval.*", ".*does not have many workers.*", ".*LeafSpec.*",
)


def train_model(
    name: str,
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    profile: str = "tiny",
    *,
    max_steps: int | None = None,
    max_epochs: int | None = None,
    seed: int = 0,
    resume: str | os.PathLike | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Train model ``name`` on ``data_root`` and write ``out_dir/metrics.csv`` and ``out_dir/checkpoints/``.

    ``resume``: a checkpoint path, or ``"auto"`` for ``out_dir/checkpoints/last.ckpt`` when it exists.
    ``max_steps`` / ``max_epochs`` replace the profile's ``train.max_steps`` / ``train.max_epochs`` (a given
    ``max_steps`` alone sets the length; with both, the shorter wins).
    Returns ``{"checkpoint": last.ckpt path, "metrics_csv": path, "metrics": {name: float}, "module": ...}``.
    """
    out_dir = Path(out_dir)
    config = training_config(name, profile, config_overrides)
    train_cfg = config["train"]
    if max_steps is not None:
        train_cfg["max_steps"] = int(max_steps)
        if max_epochs is None:
            train_cfg["max_epochs"] = -1
    if max_epochs is not None:
        train_cfg["max_epochs"] = int(max_epochs)
    train_cfg["precision"] = resolve_precision(train_cfg["precision"], accelerator)  # the checkpoint keeps it
    ckpt_dir = out_dir / "checkpoints"
    ckpt_path = None
    if resume is not None:
        ckpt_path = ckpt_dir / "last.ckpt" if str(resume) == "auto" else Path(resume)
        if str(resume) == "auto" and not ckpt_path.is_file():
            ckpt_path = None
        elif not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: checkpoint {ckpt_path} does not exist")
    if ckpt_path is None and (out_dir / "metrics.csv").is_file():
        (out_dir / "metrics.csv").unlink()  # a fresh run does not append to an older run's log
    for stale in ckpt_dir.glob(".*.tmp"):  # the temporary file of a save that a kill interrupted
        stale.unlink(missing_ok=True)

    pl.seed_everything(seed, workers=True, verbose=False)
    module = DPFaceModule(name, profile, model_overrides, config)
    datamodule = DPFaceDataModule(data_root, config["data"], seed=seed)
    saver = SaveLastCheckpoint(ckpt_dir, train_cfg["checkpoint_every_n_steps"],
                               train_cfg["keep_epoch_checkpoints"])
    trainer = pl.Trainer(
        accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes,
        max_steps=-1, max_epochs=-1,  # the length is set in steps below
        precision=train_cfg["precision"], gradient_clip_val=train_cfg["gradient_clip_val"],
        check_val_every_n_epoch=None if train_cfg["val_every_n_steps"] else train_cfg["val_every_n_epochs"],
        val_check_interval=train_cfg["val_every_n_steps"] or 1.0,
        limit_val_batches=train_cfg["limit_val_batches"],
        log_every_n_steps=train_cfg["log_every_n_steps"], deterministic=train_cfg["deterministic"],
        sync_batchnorm=train_cfg["sync_batchnorm"],
        logger=CSVLogger(save_dir=str(out_dir), name="", version=""), callbacks=[saver],
        plugins=[AtomicCheckpointIO()], enable_checkpointing=False, enable_progress_bar=progress_bar,
        enable_model_summary=False, num_sanity_val_steps=0,
        use_distributed_sampler=False,  # DPFaceDataModule shards its samplers itself
    )
    # Training length in optimiser steps (the epoch count of a run resumed mid-epoch is shifted by one in
    # Lightning's bookkeeping; counting steps keeps continuous and resumed runs identical).
    datamodule.setup("fit")
    per_epoch = datamodule.steps_per_epoch(trainer.world_size)
    limits = [n for n in (train_cfg["max_steps"], per_epoch * train_cfg["max_epochs"]) if n > 0]
    if not limits:
        raise ConfigError("train.max_steps and train.max_epochs are both unset (<= 0); give one of them")
    trainer.fit_loop.epoch_loop.max_steps = min(limits)
    with warnings.catch_warnings():
        for pattern in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
    return {"checkpoint": saver.last, "metrics_csv": out_dir / "metrics.csv", "metrics": metrics,
            "module": module, "trainer": trainer}


def _seed(text: str) -> int:
    """``--seed``: an integer >= 0 (numpy's generators refuse negative seeds); argparse names the option."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def cli(argv: list[str] | None = None) -> int:
    """``dpface train``: train a registered model from its YAML config (see ``--help``)."""
    from dpface_lib.models import list_models

    parser = argparse.ArgumentParser(prog="dpface train",
                                     description="Train a registered model from its YAML config.")
    parser.add_argument("--model", required=True, help=f"model name ({', '.join(list_models())})")
    parser.add_argument("--profile", default="tiny", help="full (paper settings) or tiny (CPU)")
    parser.add_argument("--data-root", default=None, help="dataset root (default: the kit's data_samples/)")
    parser.add_argument("--out", required=True, help="output folder: metrics.csv, checkpoints/")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--seed", type=_seed, default=0, help="random seed, an integer >= 0")
    parser.add_argument("--resume", default=None,
                        help="checkpoint to continue from, or 'auto' (OUT/checkpoints/last.ckpt if present)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the config's)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. train.scheduler.name=cosine or data.crop.size=[128,128]")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="model constructor override, e.g. channels=16")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", default="auto", help="number of devices per node, or 'auto'")
    parser.add_argument("--strategy", default="auto", help="e.g. ddp")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--no-progress-bar", action="store_true")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
        for key, value in (("train.optimizer.lr", args.lr), ("data.batch_size", args.batch_size),
                           ("data.num_workers", args.num_workers)):
            if value is not None:
                set_dotted(overrides, key, value)
        model_overrides = parse_overrides(args.model_arg, "--model-arg")
        from dpface_lib.data import resolve_data_root

        devices = int(args.devices) if str(args.devices).isdigit() else args.devices
        root = resolve_data_root(args.data_root, relative_to=Path.cwd())
        result = train_model(args.model, root, args.out, args.profile,
                             max_steps=args.max_steps, max_epochs=args.max_epochs, seed=args.seed,
                             resume=args.resume, model_overrides=model_overrides, config_overrides=overrides,
                             accelerator=args.accelerator, devices=devices, strategy=args.strategy,
                             num_nodes=args.num_nodes, progress_bar=not args.no_progress_bar)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dpface train: {exc}", file=sys.stderr)
        return 2
    print(f"checkpoint: {result['checkpoint']}")
    print(f"log: {result['metrics_csv']}")
    for key in sorted(result["metrics"]):
        print(f"{key}: {result['metrics'][key]:.4g}")
    return 0
