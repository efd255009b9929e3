"""The GPU benchmarks' plumbing, run on the CPU: bench_gpu end to end at a toy size, and
bench_train's --device / --precision / --out options."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench import bench_gpu, bench_train, harness, peers
from models_src.data import Interactions, split_interactions


def test_bench_gpu_runs_end_to_end_and_writes_its_table(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_gpu, "RESULTS", tmp_path)
    monkeypatch.setattr(harness, "RESULTS", tmp_path)  # where save_results writes
    argv = ["--device", "cpu", "--listens", "3000", "--users", "300", "--items", "400"]
    argv += ["--groups", "10", "--epochs", "2", "--output", "smoke"]
    assert bench_gpu.main(argv) == 0
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert result["data"]["listens"] >= 2900 and result["data"]["groups"] <= 10
    assert [run["precision"] for run in result["runs"]] == ["fp32", "bf16"]
    for run in result["runs"]:
        assert run["epochs"] == 2 and len(run["epoch_seconds"]) == 2
        assert all(math.isfinite(loss) for loss in run["losses"])
        assert 0.0 <= run["val"]["recall@10"] <= 1.0 and run["peak_cuda_mb"] is None
        assert run["config"]["precision"] == run["precision"]
        assert run["config"]["embedding_dim"] == 128  # the nightly's defaults
    table = (tmp_path / "smoke.md").read_text()
    assert "| fp32 |" in table and "| bf16 |" in table and "bf16 vs fp32:" in table
    assert "Machine: CPU" in table


def test_generated_night_has_dense_ids_and_one_artist_per_track():
    data = bench_gpu.generate(5000, users=400, items=500, groups=12)
    assert len(data) >= 4500
    assert data.user.max() == data.num_users - 1 and data.item.max() == data.num_items - 1
    assert len(data.item_group) == data.num_items and data.num_groups <= 12
    assert data.ts is not None and np.all(np.diff(data.ts) >= 0)  # day after day, in order


def test_a_failed_precision_is_recorded_and_the_table_still_written():
    runs = [{"precision": "bf16", "error": "Traceback ...\nRuntimeError: no bf16 kernel"}]
    result = {
        "machine": {"device": "cuda", "torch": "2.x", "cpu_cores": 16, "gpu": "H200", "cuda": "13"},
        "epochs": 3,
        "data": {"listens": 10, "train_rows": 7, "users": 2, "items": 3, "groups": 1,
                 "generate_seconds": 1.0},
        "runs": runs,
    }  # fmt: skip
    table = bench_gpu.markdown(result)
    assert "| bf16 | failed: `RuntimeError: no bf16 kernel` |" in table
    assert "Machine: H200 (CUDA 13)" in table


def test_bench_train_names_its_device_and_writes_under_out(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_train, "RESULTS", tmp_path)
    monkeypatch.setattr(harness, "RESULTS", tmp_path)  # where save_results writes
    argv = ["bench_train", "--out", "train_cuda", "--models", "none", "--device", "cuda"]
    monkeypatch.setattr("sys.argv", argv)
    bench_train.main()  # no model matches: nothing trains, the files are still written
    assert json.loads((tmp_path / "train_cuda.json").read_text()) == []
    assert not (tmp_path / "train.json").exists()
    cpu_row = {"model": "LightGCN (PyG)", "dataset": "d"}
    assert bench_train.machine_line([cpu_row]).endswith("cores, CPU")
    gpu_row = {**cpu_row, "device_name": "NVIDIA H200", "precision": "bf16"}
    line = bench_train.machine_line([gpu_row])
    assert "on NVIDIA H200 (bf16), the other peers on CPU" in line


def test_lightgcn_on_cpu_refuses_bf16_in_one_line():
    rng = np.random.default_rng(0)
    data = Interactions(rng.integers(0, 30, 300), rng.integers(0, 20, 300), 30, 20)
    split = split_interactions(data, "hash", 0.1, 0.1)
    with pytest.raises(ValueError, match="bf16 needs CUDA"):
        peers.lightgcn(split, max_epochs=1, precision="bf16")
