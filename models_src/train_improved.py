"""`python -m models_src.train_improved`: train/val/test, early stopping, LR schedule, checkpoints.

python -m models_src.train_improved --epochs 50 --patience 5
python -m models_src.train_improved --model rating --data sample-ratings --use-scheduler
python -m models_src.train_improved --resume --output-dir data/runs/my-run
torchrun --standalone --nproc-per-node 2 -m models_src.train_improved --data export.parquet
    (GAT-BPR, data-parallel: gloo on CPU, nccl with one GPU per process; models_src/distributed.py)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models_src.cli import (
    add_common_options,
    config_from_args,
    default_output_dir,
)
from models_src.distributed import init_from_torchrun, shutdown
from models_src.learners import prepare_learner
from models_src.runs import train_run
from models_src.trainers import AdvancedTrainer


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_options(parser, default_epochs=50)
    add = parser.add_argument
    add(
        "--patience", type=int, default=5, help="epochs without a better val metric before stopping"
    )
    add("--min-lr", type=float, default=1e-4)
    add("--lr-factor", type=float, default=0.5)
    add("--lr-patience", type=int, default=3)
    add("--use-scheduler", action="store_true", help="ReduceLROnPlateau on the val metric")
    add("--val-ratio", type=float, default=0.15)
    add("--test-ratio", type=float, default=0.15)
    add("--split", choices=["hash", "time", "day-hash"], default="hash")
    add("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    add(
        "--run-spec",
        type=Path,
        default=None,
        help="a JSON run (config, data, out_dir, warm) written by the nightly train task;"
        " the other options are ignored",
    )
    args = parser.parse_args(argv)
    if args.run_spec:
        return _run_spec(args.run_spec)
    if args.resume and args.output_dir is None:
        parser.error("--resume needs --output-dir (the run to continue)")
    config = config_from_args(
        args,
        epochs=args.epochs or 50,
        patience=args.patience,
        min_lr=args.min_lr,
        lr_factor=args.lr_factor,
        lr_patience=args.lr_patience,
        use_scheduler=args.use_scheduler,
        val_ratio=args.val_ratio,
        test_ratio=args.test_ratio,
        split=args.split,
    )
    parallel = init_from_torchrun(config.device)
    try:
        learner, artifacts = prepare_learner(config, args.data)
        output_dir = args.output_dir or default_output_dir(config.model)
        trainer = AdvancedTrainer(learner, config, output_dir, artifacts=artifacts)
        if args.resume:
            trainer.resume()
        final = trainer.fit()
    finally:
        shutdown()
    if parallel.is_main:
        _print_summary(final, config.k, output_dir)
    return final


def _run_spec(path: Path) -> dict:
    """The nightly flow's run, in this (torchrun) process: models_src.runs.train_run."""
    spec = json.loads(path.read_text())
    parallel = init_from_torchrun(spec["config"].get("device", "auto"))
    try:
        _, final = train_run(
            spec["config"],
            spec["data"],
            Path(spec["out_dir"]),
            spec.get("warm"),
            log=print if parallel.is_main else (lambda line: None),
        )
    finally:
        shutdown()
    return final


def _print_summary(final: dict, k: int, output_dir) -> None:
    for split in ("val", "test"):
        metrics = final[split]
        line = (
            f"{split}: recall@{k} {metrics[f'recall@{k}']:.4f}, ndcg@{k} {metrics[f'ndcg@{k}']:.4f}"
        )
        if "rmse" in metrics:
            line += f", rmse {metrics['rmse']:.4f}, mae {metrics['mae']:.4f}"
        print(line)
    print(f"Best epoch {final['best_epoch']}; outputs in {output_dir}")


if __name__ == "__main__":
    main()
