"""Scale-out: ``dpface train`` under Lightning's DDP with two CPU processes (gloo), against one process.

The runs are set up so that a two-process run and a one-process run with the same global batch do the
same arithmetic: one camera (every sample has the same number of face pixels, so the masked-mean losses of
the two halves average to the loss of the whole batch), no crop, and a small network without BatchNorm
(registered by a launcher script; torch's SyncBatchNorm, ``train.sync_batchnorm``, needs CUDA, and
per-process BatchNorm statistics differ from whole-batch ones by design). Lightning shards the kit's
seeded sampler so that process r takes positions r, r + 2, ... of the epoch's order: global batch k holds
the same samples in both runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import write_tiny_dataset

import dpface_lib.models as models
from dpface_lib.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

COMMON = ["--model", "plainnet", "--profile", "tiny", "--no-progress-bar", "--accelerator", "cpu",
          "--set", "data.crop.mode=none", "--set", "data.eval_crop.mode=none", "--set", "data.lights=null",
          "--set", "data.photometric.lighting=null",
          "--set", "train.val_every_n_steps=null", "--set", "train.val_every_n_epochs=1",
          "--set", "train.log_every_n_steps=1", "--set", "data.eval_batch_size=2",
          "--set", "train.scheduler.name=constant"]

#: `dpface train` with one more registered model: Lightning starts rank 1 by running this script again with
#: the same arguments, so the registration happens in every process.
LAUNCHER = """
import os
import sys
from pathlib import Path

import torch
from torch import nn

import dpface_lib.config as config
import dpface_lib.models as models
from dpface_lib.cli import main
from dpface_lib.models.blocks import disparity_outputs


class PlainNet(nn.Module):
    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.loss_weights, self.loss_terms = [1.0], {"smooth_l1": 1.0}
        self.net = nn.Sequential(nn.Conv2d(6, channels, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(channels, 1, 3, padding=1))

    def forward(self, batch):
        return disparity_outputs([self.net(torch.cat([batch["left"], batch["right"]], 1))[:, 0]], batch)


models.CONFIG_DIR = config.CONFIG_DIR = Path(os.environ["DPFACE_TEST_CONFIG_DIR"])
models.register_model("plainnet", PlainNet)
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    # 16 training samples (2 groups x 4 views x 2 lights, camera 1): 4 steps per epoch at global batch 4
    return write_tiny_dataset(tmp_path_factory.mktemp("ddp"), n_groups=3, cameras=(1,), n_views=4,
                              lights=(1, 2), size=(64, 64))


@pytest.fixture(scope="module")
def launcher(tmp_path_factory) -> tuple[Path, Path]:
    """The launcher script and a config folder with plainnet.yaml (DPNet's training sections)."""
    folder = tmp_path_factory.mktemp("launcher")
    config = yaml.safe_load((models.CONFIG_DIR / "dpnet.yaml").read_text())
    config["model"] = {"args": {"channels": 8}}
    for profile in config["profiles"].values():
        profile["model"] = {}
        # float32: one process and two must agree to 1e-5, which bfloat16 convolutions (`precision: auto` on a
        # CPU with AVX512-BF16) do not hold
        profile.setdefault("train", {})["precision"] = "32-true"
    (folder / "plainnet.yaml").write_text(yaml.safe_dump(config))
    script = folder / "launch.py"
    script.write_text(LAUNCHER)
    return script, folder


def train(launcher: tuple[Path, Path], root: Path, out: Path, *extra: str, devices: int,
          batch: int) -> subprocess.CompletedProcess:
    script, configs = launcher
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "DPFACE_TEST_CONFIG_DIR": str(configs)}
    command = [sys.executable, str(script), "train", *COMMON, "--data-root", str(root), "--out", str(out),
               "--devices", str(devices), "--set", f"data.batch_size={batch}", *extra]
    if devices > 1:
        command += ["--strategy", "ddp"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoints" / "last.ckpt")["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key].double(), b[key].double(), atol=atol, rtol=1e-4, msg=key)


def test_ddp_matches_one_process_and_resumes_from_an_epoch_end(launcher, root: Path, tmp_path: Path) -> None:
    train(launcher, root, tmp_path / "single", "--max-steps", "8", devices=1, batch=4)
    ddp = train(launcher, root, tmp_path / "ddp", "--max-steps", "8", devices=2, batch=2)
    log = ddp.stdout + ddp.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and "GLOBAL_RANK: 0, MEMBER: 1/2" in log  # both ranks ran

    # one checkpoint and one log, written by rank 0: no per-rank copies, no leftover temporary files
    files = sorted(p.relative_to(tmp_path / "ddp").as_posix() for p in (tmp_path / "ddp").rglob("*")
                   if p.is_file())
    assert files == ["checkpoints/last.ckpt", "hparams.yaml", "metrics.csv"], files
    ddp_ckpt = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.ckpt")
    assert ddp_ckpt["global_step"] == 8 and ddp_ckpt["dpface"]["model"] == "plainnet"

    # same global batch, same samples, same arithmetic up to float reduction order
    assert_same_weights(weights(tmp_path / "ddp"), weights(tmp_path / "single"), atol=1e-5)

    # validation metrics reduced over the ranks: each rank scores half of the 8 test samples, the logged
    # value is their mean, equal to the one-process mean over all 8
    def val(out: Path) -> pd.Series:
        table = pd.read_csv(out / "metrics.csv")
        return table.dropna(subset=["val/ai1"]).set_index("step")["val/ai1"]

    single_val, ddp_val = val(tmp_path / "single"), val(tmp_path / "ddp")
    assert len(ddp_val) == 2 and list(ddp_val.index) == list(single_val.index)
    assert ddp_val.to_numpy() == pytest.approx(single_val.to_numpy(), rel=1e-4, abs=1e-6)

    # resume under DDP from the end of epoch 1: the same weights as the uninterrupted DDP run
    train(launcher, root, tmp_path / "resumed", "--max-steps", "4", devices=2, batch=2)
    train(launcher, root, tmp_path / "resumed", "--max-steps", "8", "--resume", "auto", devices=2, batch=2)
    assert_same_weights(weights(tmp_path / "resumed"), weights(tmp_path / "ddp"), atol=1e-6)
