"""One training run, cold or warm-started from a champion: what the nightly train task calls in
its own process and what `train_improved --run-spec` calls in each torchrun process, so both
paths train the same way."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from models_src.config import TrainConfig
from models_src.data import Interactions
from models_src.evaluation import Protocol
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
    own (shorter) config; a champion of another shape is reported and training starts cold, and
    so does {"refused": why} (a champion tonight's model must not start from).
    Returns the trainer and the final metrics, with `started_from` saying which it was.
    """
    cold = TrainConfig.from_dict(config)
    learner, artifacts = prepare_learner(cold, data)
    if hasattr(learner, "bias_fit"):  # what the serving refit fits its biases with
        artifacts["bias_regularization"] = learner.bias_fit.params["regularization"]
    train_config, started = cold, {"warm": False, "reason": "no champion to start from"}
    if warm is not None and "refused" in warm:  # a champion tonight's model must not start from
        started, warm = {"warm": False, "reason": warm["refused"]}, None
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
        score_start=started["warm"] or getattr(learner, "starts_from_baseline", False),
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
        final, _ = blend_item_item(learner, train_config, Path(out_dir), final, log)
        (Path(out_dir) / RESULT_FILE).write_text(
            json.dumps({"final": final, "history": trainer.history}, default=float)
        )
    return trainer, final


def blend_item_item(
    learner, config: TrainConfig, out_dir: Path, final: dict, log: Callable[[str], None] = print
) -> tuple[dict, Callable | None]:
    """After GAT-BPR's training: choose on val EASE^R's λ and its weight in the blend
    (models_src/item_item.py), then the recency prior's half-life and weight (models_src/
    recency.py), record the choices in best_model.pt (publish and the serving refit rebuild the
    same scorer from them) and return `final` with the served model's val and test metrics (the
    embeddings' own kept under `embeddings_only`) and the score function of the model as it will
    serve (users -> item scores; None for a rating model). `final` is unchanged when the config
    turns both off (or neither the blend nor the prior helps). The blend's weights are
    neighbour lists (models_src/neighbours.py), or EASE^R's dense matrix with
    `item_item_dense`."""
    from models_src.bpr_learner import BPRLearner
    from models_src.item_item import blend, history_matrix, item_item_scores
    from models_src.learner_base import training_positives

    if not isinstance(learner, BPRLearner):
        return final, None

    @functools.cache
    def tables() -> tuple[torch.Tensor, torch.Tensor]:
        # Propagated on first use only: a nightly run with the blend off never needs them.
        return tuple(table.cpu() for table in learner.item_scores())

    def embedding_scores(users: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        user_emb, item_emb = tables()
        block = user_emb[users.cpu()] @ item_emb.T
        return block if bias is None else block.add_(bias)

    def plain(bias: torch.Tensor | None) -> Callable:
        return functools.partial(embedding_scores, bias=bias)

    def summary(scores, part: str) -> dict:
        return learner.protocol.evaluate(scores, part, config.k, config.eval_batch_size).summary

    train = learner.splits["train"]
    positives = training_positives(train, config, learner.like_threshold)
    served = _Served(learner, config, out_dir, final, summary, positives, log)
    if not config.item_item:
        return served.with_recency_prior(plain, embedding_scores)
    history = history_matrix(train, learner.num_users, learner.num_items)
    choice, weights = _choose_item_item(
        learner.num_users,
        learner.num_items,
        config,
        (embedding_scores, positives, history, lambda s: summary(s, "val")[config.monitor]),
        log,
    )
    served.result["item_item"] = choice.to_dict()
    if weights is None:
        return served.with_recency_prior(plain, embedding_scores)

    def blended(bias: torch.Tensor | None) -> Callable:
        def scores(users: torch.Tensor) -> torch.Tensor:
            learned = item_item_scores(history, users, weights)
            return blend(embedding_scores(users, bias), learned, choice.weight)

        return scores

    served.record({"val": final["val"], "test": final["test"]}, blended(None))
    served.save_choice("item_item", choice.recorded())
    return served.with_recency_prior(blended, embedding_scores)


def _choose_item_item(num_users: int, num_items: int, config: TrainConfig, inputs: tuple, log):
    """Neighbour lists (or, asked for, EASE^R's dense weights where they fit), chosen on val;
    `inputs`: (embedding scores, positives, history, val metric of a score function)."""
    from models_src.item_item import choose_blend, choose_sparse_blend, fits

    if config.item_item_dense and fits(num_users, num_items, config.item_item_max_items):
        choice, weights = choose_blend(*inputs)
        log(
            f"item-item blend: EASE^R lambda {choice.lam:g}, weight {choice.weight:g}"
            f" ({choice.seconds:.0f} s)"
        )
        return choice, weights
    choice, weights = choose_sparse_blend(*inputs, max_items=config.item_item_max_items)
    log(
        f"item-item blend ({num_items} items, neighbour lists): {choice.method}"
        f" {choice.params}, weight {choice.weight:g} ({choice.seconds:.0f} s)"
    )
    return choice, weights


class _Served:
    """The served scorer's choices after training, recorded in `result` and best_model.pt."""

    def __init__(self, learner, config, out_dir, final, summary, positives, log) -> None:
        self.learner, self.config, self.out_dir = learner, config, out_dir
        self.result, self.summary, self.positives, self.log = dict(final), summary, positives, log

    def record(self, embeddings_only: dict | None, scores: Callable) -> None:
        """The served model's val and test metrics; the embeddings' own kept once."""
        if embeddings_only is not None and "embeddings_only" not in self.result:
            self.result["embeddings_only"] = embeddings_only
        self.result["val"] = self.summary(scores, "val")
        self.result["test"] = self.summary(scores, "test")

    def save_choice(self, key: str, value: dict) -> None:
        from models_src.checkpoint import load_checkpoint, save_checkpoint

        best = load_checkpoint(self.out_dir / "best_model.pt")
        best[key] = value
        save_checkpoint(self.out_dir / "best_model.pt", best)

    def with_recency_prior(
        self, compose: Callable, embedding_scores: Callable
    ) -> tuple[dict, Callable]:
        """Choose the recency prior's half-life and weight on val for the scorer `compose(bias)`
        builds (the bias added to the embeddings' scores, before any blend, as served)."""
        from models_src.recency import choose_prior, score_spread

        if not self.config.recency_prior:
            return self.result, compose(None)
        spread = score_spread(embedding_scores, self.learner.num_users)
        current = self.result["val"][self.config.monitor]
        choice, bias = choose_prior(
            compose,
            self.positives,
            spread,
            lambda scores: self.summary(scores, "val")[self.config.monitor],
            current,
        )
        self.log(
            f"recency prior: {choice.label}, weight {choice.weight:g} ({choice.seconds:.0f} s)"
        )
        self.result["recency_prior"] = choice.to_dict()
        if bias is None:
            return self.result, compose(None)
        scores = compose(bias)
        self.record({"val": self.result["val"], "test": self.result["test"]}, scores)
        self.save_choice(
            "recency_prior", {"half_life_days": choice.half_life_days, "weight": choice.weight}
        )
        return self.result, scores


BASELINE_SUFFIX = ".baseline.pt"


def fit_baselines_run(
    config: dict,
    data: str | Interactions,
    out_dir: Path,
    families: list[str],
    *,
    splits: dict[str, Interactions] | None = None,
    protocol: Protocol | None = None,
) -> dict[str, str]:
    """Tonight's baselines of `config`'s slot on its train split, each saved to
    `out_dir/<family>.baseline.pt`; returns family -> file. Ranking: `families` (MostPopular,
    ALS), judged on the protocol's liked items for explicit data. Rating: the bias baseline.
    `data`: a source name or its loaded interactions; `splits` and `protocol`: `config`'s split
    and evaluation protocol of them when the caller already built them (the baselines task does,
    for the champion it ranks beside: at 10M rows each costs seconds and a copy of the data)."""
    from models_src.baselines import bias_on_val, fit_ranking_baselines
    from models_src.config import like_threshold
    from models_src.datasets import load_source
    from models_src.learner_base import training_positives
    from models_src.learners import split_for_training

    train_config = TrainConfig.from_dict(config)
    source = load_source(data) if isinstance(data, str) else data
    splits = splits or split_for_training(source, train_config)
    if train_config.model == "rating":
        fitted = {"bias": bias_on_val(splits)}
    else:
        threshold = like_threshold(source, train_config.rating_threshold)
        protocol = protocol or Protocol(splits, threshold)
        positives = {
            **splits,
            "train": training_positives(splits["train"], train_config, threshold),
        }
        fitted = fit_ranking_baselines(
            positives, protocol, tuple(families), train_config.k, seed=train_config.seed
        )
        for baseline in fitted.values():  # what its serving refit must learn from too
            baseline.params["liked_only_from"] = (
                threshold if threshold is not None and train_config.positives == "liked" else None
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for family, baseline in fitted.items():
        path = out_dir / f"{family}{BASELINE_SUFFIX}"
        save_baseline(baseline, path)
        files[family] = str(path)
        if train_config.model != "rating":
            _evaluate_for_the_gate(baseline, path, source, splits, protocol, config)
    return files


def _evaluate_for_the_gate(baseline, path: Path, data, splits, protocol, config: dict) -> None:
    """The baseline on val and test as it will serve, saved beside it for the gate, which then
    does not rank it again: here it runs on the task runner beside training, and ALS's val
    ranking from choosing its setting is reused (the same scores as served)."""
    from models_src.evaluation import HELD_OUT, night_record, save_results
    from models_src.serving import (
        ServedModel,
        cold_start_on_val,
        evaluate_served,
        popularity_counts,
    )

    k = TrainConfig.from_dict(config).k
    cold_start = cold_start_on_val(splits, protocol, k)
    served = ServedModel(
        baseline.buffers, popularity_counts(splits["train"]), cold_start=cold_start
    )
    # A ranking made while choosing the baseline stands only where no user goes to the
    # cold-start list instead.
    results = {} if bool(cold_start.no_history.any()) else dict(baseline.evaluated)
    missing = tuple(part for part in HELD_OUT if part not in results)
    results |= evaluate_served(protocol, served, missing, k) if missing else {}
    key = evaluation_key(baseline.buffers, night_record(data, config, k))
    save_results(evaluation_file(path), results, key)


def evaluation_file(baseline_file: Path) -> Path:
    return baseline_file.with_name(baseline_file.name.replace(BASELINE_SUFFIX, ".evaluation.npz"))


def evaluation_key(buffers: dict, record: dict) -> dict:
    """What a saved ranking answers: tonight's evaluation record and the scorer tables it
    ranked (a refitted or replaced model is ranked again)."""
    from models_src.serving import tables_digest

    return {"record": record, "tables": tables_digest(buffers)}


def save_baseline(baseline, path: Path) -> None:
    from models_src.checkpoint import save_checkpoint

    save_checkpoint(
        path,
        {
            "family": baseline.family,
            "buffers": baseline.buffers,
            "params": json.loads(json.dumps(baseline.params, default=float)),
            "seconds": baseline.seconds,
        },
    )


def load_baseline(path: Path):
    from models_src.baselines import FittedBaseline
    from models_src.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    return FittedBaseline(state["family"], state["buffers"], state["params"], state["seconds"])


def refit_run(
    gated_run: Path,
    data: str,
    out_dir: Path,
    warm_checkpoint: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """The serving model: the gated run's configuration trained on every interaction.

    It runs the gated run's epochs up to its best one, each at the learning rate that epoch had
    (the schedule was chosen on val; there is no val to choose on here), from the same kind of
    starting point: from scratch when the gated run was, else from `warm_checkpoint` (the
    champion's serving refit, or its evaluated checkpoint when it has none). Writes
    best_model.pt (the checkpoint publish reads) into `out_dir`."""
    from models_src.checkpoint import load_checkpoint, save_checkpoint
    from models_src.learners import prepare_learner

    gated = load_checkpoint(gated_run / "best_model.pt")
    config = TrainConfig.from_dict(gated["config"])
    chosen = gated.get("artifacts", {}).get("bias_regularization")
    if chosen is not None and config.bias_regularization is None:
        config = replace(config, bias_regularization=chosen)  # chosen on the gated run's val
    learner, artifacts = prepare_learner(config, data, holdout=False)
    artifacts["holdout"] = False
    started = {"warm": False}
    if warm_checkpoint is not None:
        report = warm_start(learner, artifacts, Path(warm_checkpoint))
        started = {"warm": True, "checkpoint": warm_checkpoint, **report.to_dict()}
    schedule = [row["lr"] for row in gated["history"] if row["epoch"] <= gated["best_epoch"]]
    optimizer = torch.optim.Adam(
        learner.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    losses = []
    for epoch, lr in enumerate(schedule, start=1):
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses.append(learner.train_epoch(optimizer, epoch))
        log(
            f"Serving refit epoch {epoch}/{len(schedule)} - train_loss: {losses[-1]:.4f}, lr {lr:g}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        out_dir / "best_model.pt",
        {
            "model": learner.model.state_dict(),
            "model_args": learner.model_args(),
            "model_kind": config.model,
            "epoch": len(schedule),
            "config": config.to_dict(),
            "artifacts": artifacts,
            # The gated run's blend (λ, weight) and recency prior (half-life, weight), rebuilt on
            # every interaction at publish.
            "item_item": gated.get("item_item"),
            "recency_prior": gated.get("recency_prior"),
            "history": [
                {"epoch": e, "train_loss": loss, "lr": lr}
                for e, (loss, lr) in enumerate(zip(losses, schedule, strict=True), 1)
            ],
        },
    )
    return {"run_dir": str(out_dir), "epochs": len(schedule), "started_from": started}


def refit_baseline_run(baseline_file: str, data: str, out_file: Path) -> str:
    """A baseline's serving refit: the same family and settings on every interaction."""
    from models_src.baselines import refit_on_all
    from models_src.datasets import load_source

    baseline, every = load_baseline(Path(baseline_file)), load_source(data)
    liked_from = baseline.params.get("liked_only_from")
    if liked_from is not None:
        every = every.subset(every.rating >= liked_from)
    refit = refit_on_all(baseline, every)
    save_baseline(refit, out_file)
    return str(out_file)
