"""GAT-BPR's training stage of a large night on a GPU: fp32 against bf16 autocast.

    python -m bench.bench_gpu             (bench/gpu_check.sh, `make bench-gpu`: on CUDA)
    python -m bench.bench_gpu --device cpu --listens 20000 --users 2000 --items 3000 \\
        --epochs 1 --output gpu_smoke     (the whole path on a CPU, at a toy size)

The night is bench_scale's largest: 10M listens drawn by the sample generator over 200k users,
100k tracks and 2,000 artists in 10 daily batches, held in memory as the nightly's export holds
them (dense indices, each track's artist as its side node). It is split as the nightly splits it
(hash, 70/15/15), and GAT-BPR trains with the nightly's defaults (models_src/params.py) for a
fixed number of epochs (no early stop), once per precision, in the trainer the night uses
(AdvancedTrainer: val evaluated every epoch, checkpoints written). The item-item blend is left
out: the night skips it on a catalogue this large.

Per precision: training-step seconds per epoch (the first epoch apart, as it pays for CUDA's
warm-up), seconds of one val evaluation, the whole stage (learner built, epochs, final val and
test), peak CUDA memory (torch.cuda.max_memory_allocated), val and test Recall@10 / NDCG@10 of
the best epoch, and the loss of every epoch. A precision that fails is recorded with its error
and the other still runs. Writes bench/results/gpu.json and gpu.md (--output: another stem),
after each precision's run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import RESULTS, save_results

PRECISIONS = ("fp32", "bf16")


def listens_world(listens: int):
    """bench_scale's listens world (its `world_configs`) with `listens` events."""
    from bench.bench_scale import world_configs

    return world_configs(listens, 0)["listens"]


def generate(listens: int, users: int, items: int, groups: int):
    """The night's listens as the export holds them: dense indices, each track's artist as
    its group (models_src.datasets.generated_sample on bench_scale's world, resized)."""
    from dataclasses import replace

    from bench.bench_scale import DAYS
    from models_src.datasets import generated_sample

    config = replace(listens_world(listens), n_users=users, n_items=items, n_groups=groups)
    return generated_sample("listens", DAYS, config)


def sync(device) -> None:
    """Wait for the GPU's queued work, so a wall-clock reading covers it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_once(split: dict, precision: str, device_name: str, epochs: int) -> dict[str, Any]:
    """One training stage at `precision`: timings, peak CUDA memory, metrics."""
    import torch

    from models_src.config import TrainConfig, resolve_device, tuned_defaults
    from models_src.learners import make_learner
    from models_src.trainers import AdvancedTrainer

    device = resolve_device(device_name)
    config = TrainConfig.from_dict(
        {
            **tuned_defaults("gat-bpr"),
            "epochs": epochs,
            "patience": epochs + 1,
            "item_item": False,
            "device": device_name,
            "precision": precision,
        }
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    learner = make_learner(split, config, device)
    setup_seconds = time.perf_counter() - started
    epoch_seconds: list[float] = []
    train_epoch = learner.train_epoch

    def timed_epoch(optimizer, epoch: int) -> float:
        sync(device)
        begun = time.perf_counter()
        loss = train_epoch(optimizer, epoch)
        sync(device)
        epoch_seconds.append(time.perf_counter() - begun)
        return loss

    learner.train_epoch = timed_epoch  # the trainer calls it through the learner
    with tempfile.TemporaryDirectory(prefix="encore-bench-gpu-") as out:
        trainer = AdvancedTrainer(learner, config, Path(out), log=lambda line: None)
        final = trainer.fit()
    sync(device)
    history = trainer.history
    elapsed = [row["seconds"] for row in history]
    val_seconds = [
        after - before - steps
        for before, after, steps in zip([0.0, *elapsed[:-1]], elapsed, epoch_seconds, strict=True)
    ]
    later = epoch_seconds[1:] or epoch_seconds
    return {
        "precision": precision,
        "epochs": len(history),
        "setup_seconds": setup_seconds,
        "epoch_seconds": epoch_seconds,
        "first_epoch_seconds": epoch_seconds[0],
        "seconds_per_epoch": float(np.mean(later)),
        "val_eval_seconds": float(np.mean(val_seconds)),
        "stage_seconds": time.perf_counter() - started,
        "peak_cuda_mb": peak_cuda_mb(device),
        "losses": [row["train_loss"] for row in history],
        "best_epoch": final["best_epoch"],
        "val": pick(final["val"]),
        "test": pick(final["test"]),
        "batch_size": learner.batch_size,
        "steps_per_epoch": -(-len(learner.users) // learner.batch_size),
        "edges": int(learner.edge_index.shape[1]),
        "sampled_subgraphs": learner.sampler is not None,
        "config": config.to_dict(),
    }


def peak_cuda_mb(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def pick(metrics: dict) -> dict[str, float]:
    return {name: metrics[name] for name in ("recall@10", "ndcg@10", "coverage@10", "users")}


def machine(device_name: str) -> dict[str, Any]:
    import torch

    from models_src.config import resolve_device

    device = resolve_device(device_name)
    info = {"device": str(device), "torch": torch.__version__, "cpu_cores": os.cpu_count()}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return info


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def markdown(result: dict) -> str:
    m, d = result["machine"], result["data"]
    where = f"{m['gpu']} (CUDA {m['cuda']})" if "gpu" in m else "CPU"
    lines = [
        "# GAT-BPR's training stage on a GPU: fp32 and bf16 autocast",
        "",
        f"Machine: {where}, torch {m['torch']}, {m['cpu_cores']} CPU cores. Data: "
        f"{d['listens']:,} generated listens ({d['train_rows']:,} in train), {d['users']:,}"
        f" users, {d['items']:,} items, {d['groups']:,} artists, generated in"
        f" {d['generate_seconds']:.0f} s. GAT-BPR with the nightly's defaults,"
        f" {result['epochs']} epochs, no early stop, no item-item blend.",
        "",
        "| precision | s/epoch (after the 1st) | 1st epoch s | val eval s | stage s |"
        " peak CUDA GB | val Recall@10 | val NDCG@10 | test Recall@10 | loss per epoch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["runs"]:
        if "error" in r:
            lines.append(f"| {r['precision']} | failed: `{r['error'].splitlines()[-1]}` |")
            continue
        peak = None if r["peak_cuda_mb"] is None else r["peak_cuda_mb"] / 1024
        losses = ", ".join(f"{loss:.4f}" for loss in r["losses"])
        lines.append(
            f"| {r['precision']} | {_cell(r['seconds_per_epoch'])} |"
            f" {_cell(r['first_epoch_seconds'])} | {_cell(r['val_eval_seconds'])} |"
            f" {_cell(r['stage_seconds'], 1)} | {_cell(peak)} | {r['val']['recall@10']:.4f} |"
            f" {r['val']['ndcg@10']:.4f} | {r['test']['recall@10']:.4f} | {losses} |"
        )
    lines += ["", *comparison(result["runs"])]
    done = [r for r in result["runs"] if "error" not in r]
    if done:
        r = done[0]
        lines += [
            "",
            f"Batches of {r['batch_size']:,} pairs, {r['steps_per_epoch']} full-graph steps an"
            f" epoch over {r['edges']:,} directed edges"
            f"{' (sampled subgraphs)' if r['sampled_subgraphs'] else ''}.",
        ]
    if "gpu" not in m:
        lines += [
            "",
            "On a CPU the LightGCN layers' sparse product stays fp32 under bf16 (torch has no bf16"
            " kernel for it there), so the two rows differ little: a smoke run, not a figure.",
        ]
    return "\n".join(lines)


def comparison(runs: list[dict]) -> list[str]:
    """bf16 against fp32: speed-up, memory ratio, and the val Recall@10 difference."""
    by = {r["precision"]: r for r in runs if "error" not in r}
    if not {"fp32", "bf16"} <= set(by):
        return []
    fp32, bf16 = by["fp32"], by["bf16"]
    line = f"bf16 vs fp32: {fp32['seconds_per_epoch'] / bf16['seconds_per_epoch']:.2f}x the speed"
    if fp32["peak_cuda_mb"] and bf16["peak_cuda_mb"]:
        line += f", {bf16['peak_cuda_mb'] / fp32['peak_cuda_mb']:.2f}x the peak memory"
    delta = bf16["val"]["recall@10"] - fp32["val"]["recall@10"]
    return [f"{line}, val Recall@10 {delta:+.4f}."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listens", type=int, default=10_000_000)
    world = listens_world(0)
    parser.add_argument("--users", type=int, default=world.n_users)
    parser.add_argument("--items", type=int, default=world.n_items)
    parser.add_argument("--groups", type=int, default=world.n_groups)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--output", "--out", default="gpu", help="results stem in bench/results")
    args = parser.parse_args(argv)

    from models_src.config import TrainConfig
    from models_src.learners import split_for_training

    result: dict[str, Any] = {"machine": machine(args.device), "epochs": args.epochs}
    started = time.perf_counter()
    data = generate(args.listens, args.users, args.items, args.groups)
    # The nightly's split settings are TrainConfig's defaults (flows/params.py SplitParams).
    split = split_for_training(data, TrainConfig(model="gat-bpr"))
    result["data"] = {
        "listens": len(data),
        "train_rows": len(split["train"]),
        "users": data.num_users,
        "items": data.num_items,
        "groups": data.num_groups,
        "generate_seconds": time.perf_counter() - started,
    }
    print(f"generated: {json.dumps(result['data'])}", flush=True)
    result["runs"] = []
    for precision in args.precisions:
        print(f"training GAT-BPR, {precision}, on {args.device} ...", flush=True)
        try:
            run = train_once(split, precision, args.device, args.epochs)
        except Exception:  # a bf16 kernel missing on this GPU must not lose the fp32 figures
            run = {"precision": precision, "error": traceback.format_exc()[-4000:]}
        print(json.dumps({k: v for k, v in run.items() if k != "config"}, default=float))
        result["runs"].append(run)
        write(result, args.output)  # after each run: a run cut short keeps the ones before it
    print(markdown(result))
    return 1 if any("error" in r for r in result["runs"]) else 0


def write(result: dict, stem: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_results(stem, result, markdown(result))


if __name__ == "__main__":
    raise SystemExit(main())
