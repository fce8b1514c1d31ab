"""Data-parallel training under torchrun: 2 CPU processes give the single-process result."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml

from edgestem.config import load_config
from edgestem.distributed import World
from edgestem.rundir import load_checkpoint
from edgestem.train import train

# No BatchNorm: then the summed shard gradients are the whole batch's gradient (with BatchNorm
# each shard is normalised by its own statistics, as in DistributedDataParallel).
SETTINGS = {
    "model.encoder.channels": [4, 8, 8],
    "model.encoder.hidden": 8,
    "model.encoder.batchnorm": False,
    "train.batch_size": 16,
    "train.lr": 3e-4,
    "train.epochs": 2,
    "train.augment.model": "background",
    "train.augment.levels": [0.25],
    "seed": 2,
}


def test_shards_cover_a_batch_once():
    for n in (10, 16, 17):
        parts = [World(r, 3).shard(n) for r in range(3)]
        assert [i for s in parts for i in range(n)[s]] == list(range(n))
        assert max(s.stop - s.start for s in parts) - min(s.stop - s.start for s in parts) <= 1


def test_two_processes_match_one(tmp_path, tiny_h5):
    cfg = load_config(None, SETTINGS)
    one = train(cfg, tiny_h5, tmp_path / "one")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "edgestem.cli", "train", "--data", str(tiny_h5), "--out", str(tmp_path / "two"), "-c", str(cfg_file)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    for k, v in a["model"].items():
        np.testing.assert_allclose(b["model"][k].numpy(), v.numpy(), rtol=1e-4, atol=1e-5, err_msg=k)
    for h1, h2 in zip(one["history"], b["history"], strict=True):
        assert h2["train_total"] == pytest.approx(h1["train_total"], rel=1e-4)
        assert h2["val_total"] == pytest.approx(h1["val_total"], rel=1e-4)


def test_batches_smaller_than_the_processes_are_refused():
    from edgestem.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot be split"):
        World(0, 4).check_batches([16, 3])
