"""One training run, cold or warm-started from a champion: what the nightly train task calls in
its own process and what `train_improved --run-spec` calls in each torchrun process, so both
paths train the same way."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from models_src.config import TrainConfig
from models_src.learners import prepare_learner
from models_src.trainers import AdvancedTrainer
from models_src.warm_start import WarmStartIncompatible, warm_start

RESULT_FILE = "run_result.json"


def train_run(
    config: dict,
    data: str,
    out_dir: Path,
    warm: dict | None = None,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[dict], None] | None = None,
) -> tuple[AdvancedTrainer, dict]:
    """Train `config` (TrainConfig fields) on `data` into `out_dir`.

    `warm` ({"version", "checkpoint", "config"}) starts from that champion's weights with its
    own (shorter) config; a champion of another shape is reported and training starts cold.
    Returns the trainer and the final metrics, with `started_from` saying which it was.
    """
    cold = TrainConfig.from_dict(config)
    learner, artifacts = prepare_learner(cold, data)
    train_config, started = cold, {"warm": False, "reason": "no champion to start from"}
    if warm is not None:
        try:
            report = warm_start(learner, artifacts, Path(warm["checkpoint"]))
        except WarmStartIncompatible as mismatch:
            log(f"training from scratch: champion v{warm['version']}: {mismatch}")
            started = {"warm": False, "reason": f"champion v{warm['version']}: {mismatch}"}
        else:
            started = {"warm": True, "version": warm["version"], **report.to_dict()}
            artifacts["warm_start"] = started
            train_config = TrainConfig.from_dict({**warm["config"], "model": cold.model})
            log(
                f"warm start from champion v{warm['version']}: kept {report.kept}, new {report.new}"
            )
    trainer = AdvancedTrainer(
        learner,
        train_config,
        out_dir,
        score_start=started["warm"],
        artifacts=artifacts,
        log=log,
        on_epoch=on_epoch,
    )
    final = trainer.fit()
    final.update(
        started_from=started,
        device=str(learner.device),
        processes=learner.parallel.world_size,
    )
    if trainer.is_main:
        (Path(out_dir) / RESULT_FILE).write_text(
            json.dumps({"final": final, "history": trainer.history}, default=float)
        )
    return trainer, final
