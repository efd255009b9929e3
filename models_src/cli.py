"""Shared command-line plumbing for `python -m models_src.train` and `train_improved`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from models_src.config import TrainConfig

# Seed defaults per model: GAT-BPR's from the music recommender, the rating model's from the
# movie recommender. A value given on the command line always wins.
MODEL_DEFAULTS = {
    "gat-bpr": {"lr": 0.01, "batch_size": 512, "embedding_dim": 32, "l2": 1e-4},
    "rating": {"lr": 1e-3, "batch_size": 1024, "embedding_dim": 50, "l2": 0.05},
}


def add_common_options(parser: argparse.ArgumentParser, default_epochs: int) -> None:
    add = parser.add_argument
    add("--model", choices=["gat-bpr", "rating"], default="gat-bpr")
    add(
        "--data",
        default="sample-listens",
        help="sample-listens | sample-ratings | a .parquet export | u.data, ratings.csv, "
        "ratings.dat, user_artists.dat",
    )
    add("--epochs", type=int, default=None, help=f"default {default_epochs}")
    add("--lr", type=float, default=None, help="default 0.01 (rating: 0.001)")
    add("--batch-size", type=int, default=None, help="default 512 (rating: 1024)")
    add("--embedding-dim", type=int, default=None, help="default 32 (rating: 50)")
    add("--heads", type=int, default=4)
    add("--num-layers", type=int, default=2)
    add("--negatives", type=int, default=4, help="sampled negatives per positive (BPR)")
    add(
        "--degree-prior",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="GAT-BPR: add -1/2 log(degree) to attention logits (default: the tuned default)",
    )
    add(
        "--l2",
        type=float,
        default=None,
        help="L2 on the batch's embeddings: default 1e-4 (rating: 0.05)",
    )
    add("--weight-decay", type=float, default=0.0)
    add("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="bf16: training steps under autocast (for CUDA); weights and evaluation stay fp32",
    )
    add("--seed", type=int, default=42)
    add("--output-dir", type=Path, default=None)


def config_from_args(args: argparse.Namespace, epochs: int, **extra) -> TrainConfig:
    values = {"epochs": epochs, **MODEL_DEFAULTS[args.model]}
    for name in ("epochs", "lr", "batch_size", "embedding_dim", "l2"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return TrainConfig(
        model=args.model,
        heads=args.heads,
        num_layers=args.num_layers,
        negatives=args.negatives,
        weight_decay=args.weight_decay,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        **values,
        **extra,
    )


def default_output_dir(kind: str) -> Path:
    return Path("data") / "runs" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def write_json(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document, indent=2, default=float))
