"""`python -m models_src.train`: the simple trainer (all data, fixed learning rate).

python -m models_src.train --epochs 20
python -m models_src.train --model rating --data sample-ratings
"""

from __future__ import annotations

import argparse

from models_src.checkpoint import save_checkpoint
from models_src.cli import add_common_options, config_from_args, default_output_dir
from models_src.learners import prepare_learner
from models_src.trainers import SimpleTrainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_options(parser, default_epochs=10)
    args = parser.parse_args(argv)
    config = config_from_args(args, epochs=args.epochs or 10)
    learner, artifacts = prepare_learner(config, args.data, holdout=False)
    trainer = SimpleTrainer(learner, config, artifacts)
    trainer.fit()
    output_dir = args.output_dir or default_output_dir(f"simple-{config.model}")
    output_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        output_dir / "final_model.pt",
        {
            "model": learner.model.state_dict(),
            "model_args": learner.model_args(),
            "model_kind": config.model,
            "config": config.to_dict(),
            "history": trainer.history,
            "artifacts": artifacts,
        },
    )
    print(f"Saved {output_dir / 'final_model.pt'}")


if __name__ == "__main__":
    main()
