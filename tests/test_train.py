"""Training engine: configs, schedule, sampler, seeded augmentation, atomic checkpoints, exact resume, CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import write_tiny_dataset

import dpface_lib.config as config_module
import dpface_lib.models as models
import dpface_lib.train as train
from dpface_lib.checkpoint import AtomicCheckpointIO, CheckpointError, load_checkpoint, load_model
from dpface_lib.config import ConfigError, training_config
from dpface_lib.losses import affine_invariant_l1, disparity_normal_loss, smooth_l1_disparity
from dpface_lib.metrics import batch_metrics
from dpface_lib.models import list_models
from dpface_lib.sampling import SeededSamples, StepSampler
from dpface_lib.train import DPFaceModule, cli, train_model


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("name", list_models())
def test_every_model_has_valid_full_and_tiny_training_configs(name: str) -> None:
    full, tiny = training_config(name, "full"), training_config(name, "tiny")
    # the benchmark's settings (Kang et al. 2022 release, MODELS.md section 1 and 6.4)
    optimizer = full["train"]["optimizer"]
    assert (optimizer["name"], optimizer["lr"], optimizer["eps"], optimizer["betas"]) == ("adam", 1e-4, 1e-5,
                                                                                          [0.9, 0.999])
    assert (full["train"]["scheduler"]["step_size"], full["train"]["scheduler"]["gamma"]) == (35, 0.5)
    assert full["train"]["scheduler"]["interval"] == "epoch" and full["train"]["max_epochs"] == 75
    assert full["data"]["crop"] == {"mode": "random", "size": None, "ratio": 0.75, "multiple": 96}
    assert full["data"]["photometric"]["lighting"] == [0.5, 5.0]
    assert full["data"]["batch_size"] == (2 if name in ("psmnet", "dpnet") else 4)
    # the tiny profile is a teaching run of a few CPU minutes with a higher learning rate
    assert 0 < tiny["train"]["max_steps"] <= 700 and tiny["train"]["optimizer"]["lr"] > 1e-4


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'overrides\.train\.optimiser'"):
        training_config("dpnet", "tiny", {"train": {"optimiser": {"lr": 1.0}}})
    with pytest.raises(ConfigError, match=r"'overrides\.data\.batch_size' must be int, got '4'"):
        training_config("dpnet", "tiny", {"data": {"batch_size": "4"}})
    with pytest.raises(ConfigError, match=r"'overrides\.train\.scheduler\.name' must be one of"):
        training_config("dpnet", "tiny", {"train": {"scheduler": {"name": "poly"}}})
    with pytest.raises(ConfigError, match="must be a mapping"):
        training_config("dpnet", "tiny", {"data": {"crop": 128}})
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        training_config("dpnet", "huge")
    # ints are accepted where floats are expected, bools are not ints
    config = training_config("dpnet", "tiny", {"train": {"optimizer": {"lr": 1}}})
    assert config["train"]["optimizer"]["lr"] == 1
    with pytest.raises(ConfigError, match="must be int"):
        training_config("dpnet", "tiny", {"data": {"batch_size": True}})


def test_config_file_errors_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = yaml.safe_load((models.CONFIG_DIR / "dpnet.yaml").read_text())
    config["profiles"]["tiny"]["train"]["max_step"] = 3
    (tmp_path / "dpnet.yaml").write_text(yaml.safe_dump(config))  # a broken config of a registered model
    monkeypatch.setattr(models, "CONFIG_DIR", tmp_path)
    monkeypatch.setattr(config_module, "CONFIG_DIR", tmp_path)
    with pytest.raises(ConfigError, match=r"dpnet\.yaml: unknown key 'profiles\.tiny\.train\.max_step'"):
        training_config("dpnet", "tiny")


def test_step_schedule_equals_per_epoch_steplr() -> None:
    """The step-indexed schedule reproduces torch's StepLR stepped once per epoch (the benchmark's)."""
    cfg = {"name": "step", "step_size": 35, "gamma": 0.5, "interval": "epoch", "eta_min": 0.0,
           "warmup_steps": 0}
    steps_per_epoch = 7
    factor = train._lr_lambda(cfg, steps_per_epoch, 75 * steps_per_epoch, 1e-4)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-4)
    oracle = torch.optim.lr_scheduler.StepLR(opt, step_size=35, gamma=0.5)
    for epoch in range(75):
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            assert math.isclose(1e-4 * factor(step), opt.param_groups[0]["lr"], rel_tol=1e-12), (epoch, step)
        opt.step()
        oracle.step()
    cosine = train._lr_lambda({**cfg, "name": "cosine", "interval": "step", "eta_min": 1e-5}, 1, 100, 1e-4)
    assert cosine(0) == 1.0 and math.isclose(cosine(100), 0.1) and math.isclose(cosine(50), 0.55)


def test_warmup_ramps_linearly_into_the_schedule() -> None:
    """warmup_steps = W multiplies the schedule by (step + 1) / W over the first W steps, then leaves it."""
    base = {"name": "cosine", "step_size": 1, "gamma": 0.5, "interval": "step", "eta_min": 1e-5}
    plain = train._lr_lambda({**base, "warmup_steps": 0}, 1, 100, 1e-4)
    warm = train._lr_lambda({**base, "warmup_steps": 10}, 1, 100, 1e-4)
    for step in range(100):
        ramp = min(1.0, (step + 1) / 10)
        assert math.isclose(warm(step), ramp * plain(step), rel_tol=1e-12), step
    assert math.isclose(warm(0), 0.1 * plain(0)) and warm(9) == plain(9) and warm(60) == plain(60)


# ------------------------------------------------------------------------------------------------ data order
def test_step_sampler_resumes_mid_epoch_and_reshuffles_per_epoch() -> None:
    sampler = StepSampler(10, seed=3, batch_size=3, drop_last=True)
    assert sampler.batches_per_epoch == 3
    epochs = []
    for epoch in range(3):
        sampler.position(epoch * 3)
        epochs.append(list(sampler))
        assert sorted(i for i, _ in epochs[-1]) == list(range(10))
    assert epochs[0] != epochs[1] != epochs[2]
    for step in range(9):  # resuming after `step` optimiser steps continues the same stream
        epoch, done = divmod(step, 3)
        sampler.position(step)
        assert list(sampler) == epochs[epoch][done * 3:]
    assert list(sampler) == epochs[2]  # the skip applies to one pass only
    sampler.position(4, resume_mid_epoch=False)
    assert list(sampler) == epochs[1]


class _Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        return {"left": torch.arange(3 * 8 * 8, dtype=torch.float32).reshape(3, 8, 8) + i}


def test_seeded_samples_make_augmentation_reproducible_and_leave_global_rng_alone() -> None:
    from dpface_lib.transforms import RandomCrop

    data = SeededSamples(_Images(), RandomCrop(4))
    torch.manual_seed(0)
    expected_next = torch.rand(3)
    torch.manual_seed(0)
    first = data[(1, 12345)]["left"]
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG was restored
    assert torch.equal(data[(1, 12345)]["left"], first)
    crops = {tuple(data[(1, seed)]["left"][0, 0, :1].tolist()) for seed in range(20)}
    assert len(crops) > 1  # different seeds give different crops


# ------------------------------------------------------------------------------------------------ module
def _batch(h: int = 32, w: int = 32, b: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    depth = 800 + 50 * torch.rand(b, h, w, generator=g)
    a, b_ = torch.full((b,), -25000.0), torch.full((b,), 31.0)
    normal = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    mask = torch.ones(b, h, w, dtype=torch.bool)
    return {"left": torch.rand(b, 3, h, w, generator=g), "right": torch.rand(b, 3, h, w, generator=g),
            "lrsum": torch.rand(b, 3, h, w, generator=g), "depth": depth, "mask": mask, "normal": normal,
            "disparity": a[:, None, None] / depth + b_[:, None, None], "a": a, "b": b_,
            "K": torch.tensor([[100.0, 0, 16], [0, 100.0, 16], [0, 0, 1]]).expand(b, 3, 3).clone()}


def test_batch_metrics_of_a_perfect_prediction_are_zero() -> None:
    batch = _batch()
    outputs = {"disparity": 2.0 * batch["disparity"] + 1.0, "depth": batch["depth"],
               "normal": batch["normal"]}
    metrics = batch_metrics(outputs, batch)
    assert metrics["ai1"].shape == (2,) and float(metrics["ai1"].max()) < 1e-6  # affine invariant
    assert float(metrics["absrel"].max()) < 1e-6 and float(metrics["mean_deg"].max()) < 1e-3
    assert float(metrics["spearman"].max()) < 1e-6


def test_loss_lambdas_scale_the_model_loss() -> None:
    batch = _batch()

    def module(**lambdas):
        return DPFaceModule("dpnet", "tiny", config=training_config(
            "dpnet", "tiny", {"train": {"loss_lambdas": lambdas}}))

    base, doubled = module(smooth_l1=1.0, affine_l1=0.0), module(smooth_l1=2.0, affine_l1=0.0)
    doubled.model.load_state_dict(base.model.state_dict())
    out = base.model(batch)
    loss = base._loss(out, batch)["loss"]
    assert loss > 0 and torch.allclose(doubled._loss(out, batch)["loss"], 2 * loss)
    # a single output (eval mode of multi-output models) is weighted 1, as in the benchmark code
    single = {"disparities": out["disparities"][:, :1], "disparity": out["disparity"]}
    expected = smooth_l1_disparity(single["disparities"], batch["disparity"], batch["mask"], [1.0])
    assert torch.allclose(base._loss(single, batch)["loss"], expected)
    with pytest.raises(ConfigError, match="uses only"):
        DPFaceModule("dpnet", "tiny", config=training_config("dpnet", "tiny", {"train": {"loss_lambdas": {
            "cosine": 1.0}}}))
    # the affine-invariant term is available to every disparity model, not to a depth-only one
    affine = module(smooth_l1=0.0, affine_l1=1.0)
    expected = affine_invariant_l1(out["disparities"], batch["disparity"], batch["mask"], base.loss_weights)
    assert torch.allclose(affine._loss(out, batch)["loss"], expected)
    # so is the cosine error of the normals differentiated from the disparity
    sloped = module(smooth_l1=0.0, affine_l1=0.0, disparity_normal=1.0)
    expected = disparity_normal_loss(out["disparities"], batch, batch["mask"], base.loss_weights)
    assert expected > 0 and torch.allclose(sloped._loss(out, batch)["loss"], expected)
    for term in ("affine_l1", "disparity_normal"):
        with pytest.raises(ConfigError, match="uses only"):
            DPFaceModule("bts", "tiny", config=training_config("bts", "tiny", {"train": {"loss_lambdas": {
                term: 1.0}}}))


# ------------------------------------------------------------------------------------------------ checkpoints
def test_atomic_save_keeps_previous_checkpoint_when_a_save_dies(tmp_path: Path, monkeypatch) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)

    def dying_save(obj, target, *args, **kwargs):  # torch.save(obj, path) writing half a file, then dying
        Path(target).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.undo()
    restored = io.load_checkpoint(path)
    assert restored["global_step"] == 1 and torch.equal(restored["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


class _Payload:
    pass


def test_checkpoints_are_loaded_weights_only(tmp_path: Path) -> None:
    torch.save({"state_dict": {}, "payload": _Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="not a readable checkpoint .it stores objects other than tensors"):
        load_checkpoint(tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="missing.ckpt does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


# ------------------------------------------------------------------------------------------------ resume
def _tiny_overrides() -> dict:
    return {
        "data": {"crop": {"mode": "random", "size": [32, 32], "multiple": 32},
                 "eval_crop": {"mode": "center", "size": [32, 64], "multiple": 32},
                 "photometric": {"lighting": [0.1, 1.0]}, "batch_size": 2, "eval_batch_size": 4},
        # lr halves every epoch (4 steps): the schedule is exercised across the resume point. float32: the
        # bitwise comparisons of resumed runs must not rest on bfloat16 kernels (DPNet's coarsest 7x7 conv
        # over a 2x2 map met oneDNN's bfloat16 weight-gradient defect here; see dpface_lib.models.safeconv).
        "train": {"optimizer": {"lr": 1e-3}, "scheduler": {"name": "step", "step_size": 1, "gamma": 0.5,
                                                           "interval": "epoch"}, "log_every_n_steps": 1,
                  "precision": "32-true"},
    }


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_one_run(tmp_path: Path) -> None:
    # 1 train group x 2 cameras x 2 views x 2 lights = 8 samples, batch 2 -> 4 steps per epoch; 48x64 images
    root = write_tiny_dataset(tmp_path / "data", size=(48, 64))
    kwargs = {"config_overrides": _tiny_overrides(), "progress_bar": False, "seed": 7}
    n = 3  # stop mid-epoch; 2n crosses an epoch boundary (and an lr step)
    once = train_model("dpnet", root, tmp_path / "once", "tiny", max_steps=2 * n, **kwargs)
    train_model("dpnet", root, tmp_path / "twice", "tiny", max_steps=n, **kwargs)
    first_half = load_checkpoint(tmp_path / "twice" / "checkpoints" / "last.ckpt")
    resumed = train_model("dpnet", root, tmp_path / "twice", "tiny", max_steps=2 * n, resume="auto", **kwargs)

    a, b = load_checkpoint(once["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert first_half["global_step"] == n and a["global_step"] == b["global_step"] == 2 * n
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert any(not torch.equal(a["state_dict"][k], first_half["state_dict"][k]) for k in a["state_dict"])
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values(),
                      strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["lr_schedulers"][0]["_last_lr"] == b["lr_schedulers"][0]["_last_lr"] == [1e-3 * 0.5]

    # the checkpoint rebuilds the network by itself, in eval mode, with the trained weights
    model = load_model(once["checkpoint"])
    assert not model.training and type(model).__name__ == "DPNet"
    assert all(torch.equal(v, a["state_dict"]["model." + k]) for k, v in model.state_dict().items())
    assert a["dpface"]["model"] == "dpnet" and a["dpface"]["config"]["data"]["batch_size"] == 2

    # per-epoch validation metrics and per-step losses land in metrics.csv
    log = pd.read_csv(once["metrics_csv"])
    assert {"train/loss_step", "val/ai1", "val/absrel", "val/loss", "step"} <= set(log.columns)
    assert log["val/ai1"].notna().sum() >= 1 and log["train/loss_step"].notna().sum() == 2 * n


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(tmp_path: Path, monkeypatch) -> None:
    from dpface_lib import hostinfo

    # the hardware's part, with no ISA limit in force (tests/test_hostinfo.py covers the limits)
    monkeypatch.setattr(hostinfo, "isa_level", lambda: "AVX512")
    for variable in hostinfo.ISA_LIMIT_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    flags = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {}\nbugs\t\t: spectre_v1\n"
    for extra, native in (("avx512_bf16 avx512_vnni", True), ("amx_bf16 amx_tile", True),
                          ("avx512_vnni", False), ("", False)):
        (tmp_path / "cpuinfo").write_text(flags.format(extra))
        assert config_module.native_bf16("cpu", tmp_path / "cpuinfo") is native, extra
    (tmp_path / "bugs").write_text("flags\t\t: avx2\nbugs\t\t: avx512_bf16\n")  # only the flags line counts
    assert not config_module.native_bf16("cpu", tmp_path / "bugs")
    assert not config_module.native_bf16("cpu", tmp_path / "missing")
    assert not config_module.native_bf16("mps")

    for native, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(config_module, "native_bf16", lambda device, native=native: native)
        assert config_module.resolve_precision("auto", "cpu") == expected
        assert config_module.resolve_precision("16-mixed", "cpu") == "16-mixed"  # explicit values pass

    # a run records the precision it resolved, so its checkpoint says how it was trained
    root = write_tiny_dataset(tmp_path / "data", size=(48, 64), n_views=1, lights=(1,))
    overrides = _tiny_overrides()
    overrides["train"] = {**overrides.get("train", {}), "precision": "auto"}
    run = train_model("dpnet", root, tmp_path / "run", "tiny", max_steps=1, config_overrides=overrides,
                      progress_bar=False)
    assert load_checkpoint(run["checkpoint"])["dpface"]["config"]["train"]["precision"] == "32-true"


def test_cli_trains_and_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_tiny_dataset(tmp_path / "data", size=(32, 32), n_views=1, lights=(1,))
    out = tmp_path / "run"
    args = ["--model", "dpnet", "--data-root", str(root), "--out", str(out), "--no-progress-bar",
            "--set", "data.crop.size=[32,32]", "--set", "data.batch_size=2", "--max-steps", "1"]
    assert cli(args) == 0
    assert "checkpoint:" in capsys.readouterr().out
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 1
    assert cli([*args[:-2], "--max-steps", "2", "--resume", "auto"]) == 0
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert cli(["--model", "nosuchnet", "--data-root", str(root), "--out", str(out)]) == 2
    assert "unknown model 'nosuchnet'" in capsys.readouterr().err
    assert cli([*args, "--set", "train.optimiser.lr=1"]) == 2
    assert "unknown key 'overrides.train.optimiser'" in capsys.readouterr().err
    assert cli([*args, "--resume", str(tmp_path / "none.ckpt")]) == 2


def test_a_non_finite_gradient_stops_training_and_names_the_parameter(tmp_path: Path, monkeypatch) -> None:
    root = write_tiny_dataset(tmp_path / "data", size=(32, 32), n_views=1, lights=(1,))
    overrides = {**_tiny_overrides(), "data": {"crop": {"size": [32, 32]}, "batch_size": 2}}
    run = train_model("dpnet", root, tmp_path / "run", "tiny", max_steps=1, config_overrides=overrides,
                      progress_bar=False)
    good = load_checkpoint(run["checkpoint"])
    step = DPFaceModule.training_step
    monkeypatch.setattr(DPFaceModule, "training_step", lambda self, *a: step(self, *a) * float("nan"))
    with pytest.raises(ValueError, match=r"training step 1: the gradient of model\.enc1\.\S+ is not finite"):
        train_model("dpnet", root, tmp_path / "run", "tiny", max_steps=2, resume="auto",
                    config_overrides=overrides, progress_bar=False)
    kept = load_checkpoint(run["checkpoint"])  # the last good step is what stays on disk
    assert kept["global_step"] == 1
    assert all(torch.equal(kept["state_dict"][k], v) for k, v in good["state_dict"].items())


def test_validation_subset_is_evenly_spaced(tmp_path: Path) -> None:
    from dpface_lib.data import evenly_spaced
    from dpface_lib.datamodule import DPFaceDataModule

    assert evenly_spaced(10, 4) == [0, 3, 6, 9] and evenly_spaced(3, 8) == [0, 1, 2]
    assert evenly_spaced(0, 2) == []
    root = write_tiny_dataset(tmp_path / "data", size=(32, 32))
    config = training_config("dpnet", "tiny", {"data": {"val_subset": 3}})
    module = DPFaceModule("dpnet", "tiny", config=config)
    data = DPFaceDataModule(root, config["data"])
    data.setup("fit")
    full = DPFaceDataModule(root, training_config("dpnet", "tiny")["data"])
    full.setup("validate")
    assert len(data.datasets["val"]) == 3 and len(full.datasets["val"]) == 8  # 1 test group x 2 cams x 2 x 2
    ids = [data.datasets["val"][i]["sample_id"] for i in range(3)]
    assert ids == [full.datasets["val"][i]["sample_id"] for i in evenly_spaced(8, 3)]
    assert module.config["data"]["val_subset"] == 3


def test_sharded_step_sampler_splits_each_global_batch() -> None:
    """Process r of R takes positions r, r + R, ... of the epoch's order: global batch k of R shards with
    batch b is batch k of one sampler with batch R*b (cut to whole global batches), seeds included."""
    n, b, replicas = 23, 2, 3
    single = StepSampler(n, seed=5, batch_size=b * replicas)
    shards = [StepSampler(n, seed=5, batch_size=b) for _ in range(replicas)]
    for rank, shard in enumerate(shards):
        shard.shard(replicas, rank)
    for epoch in (0, 1):
        single.position(epoch * single.batches_per_epoch)
        full = list(single)
        parts = []
        for shard in shards:
            shard.position(epoch * shard.batches_per_epoch)
            parts.append(list(shard))
        assert all(len(p) == len(shards[0]) == 6 for p in parts) and shards[0].batches_per_epoch == 3
        for k in range(3):
            union = sorted(item for p in parts for item in p[k * b:(k + 1) * b])
            assert union == sorted(full[k * b * replicas:(k + 1) * b * replicas])
    with pytest.raises(ValueError, match="rank 3 outside"):
        StepSampler(n, 0, b).shard(3, 3)
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        StepSampler(4, 0, 2).shard(3, 0)
