"""GAT-BPR data-parallel under torchrun (2 CPU processes, gloo) trains like one process.

Every process draws the same batches and negatives and takes its shard; DDP averages the
gradients, so each step is the single-process step up to float summation order. Stated
tolerance: per epoch, train loss within 1e-5 relative and val Recall@10 / NDCG@10 within 1e-4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import planted

from models_src.distributed import DataParallel

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "--epochs", "3", "--batch-size", "1000", "--negatives", "4", "--lr", "0.05",
    "--num-layers", "1", "--device", "cpu",
]  # fmt: skip


def train(data: Path, out: Path, processes: int) -> dict:
    launcher = (
        [sys.executable, "-m", "models_src.train_improved"]
        if processes == 1
        else [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={processes}", "-m", "models_src.train_improved",
        ]
    )  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's default per process; alike here
    done = subprocess.run(
        [*launcher, "--data", str(data), *ARGS, "--output-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def test_two_gloo_processes_train_like_one(tmp_path):
    data = tmp_path / "listens.parquet"
    interactions = planted(users=300, items_per_group=40, groups=["a", "b", "c", "d"], seed=9)
    interactions.rating = None  # implicit feedback
    interactions.to_parquet(data)

    single = train(data, tmp_path / "single", processes=1)
    parallel = train(data, tmp_path / "ddp", processes=2)

    assert parallel["config"] == single["config"]
    assert len(parallel["history"]) == len(single["history"]) == 3
    for one, two in zip(single["history"], parallel["history"], strict=True):
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
        assert two["val_recall@10"] == pytest.approx(one["val_recall@10"], abs=1e-4)
        assert two["val_ndcg@10"] == pytest.approx(one["val_ndcg@10"], abs=1e-4)
    # It learned: 10 random picks of 160 items would recall about 10/160 of a user's val items.
    assert single["history"][-1]["val_recall@10"] > 3 * 10 / 160
    for split in ("val", "test"):
        assert parallel["final"][split]["recall@10"] == pytest.approx(
            single["final"][split]["recall@10"], abs=1e-4
        )
    # Only the main process wrote files, and only the newest resume point is kept.
    assert sorted(p.name for p in (tmp_path / "ddp").glob("checkpoint_epoch_*.pt")) == [
        "checkpoint_epoch_3.pt"
    ]


@pytest.mark.parametrize("size", [1000, 1001, 7, 1])
def test_shards_cover_a_batch_exactly_once(size):
    for world in (1, 2, 3):
        shards = [DataParallel(rank, world).shard(size) for rank in range(world)]
        covered = [i for s in shards for i in range(s.start, s.stop)]
        assert covered == list(range(size))
        assert max(s.stop - s.start for s in shards) - min(s.stop - s.start for s in shards) <= 1
