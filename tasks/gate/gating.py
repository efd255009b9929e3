"""The gate, run: tonight's challenger, tonight's baselines and the champion, evaluated under one
protocol on tonight's split, compared paired (models_src/gate.py), and the verdict applied.
A contender's ranking is the one saved where it was made (a baseline's by the task that fit it,
models_src/runs.py; the challenger's by its train task, `rank_run_ahead`; the champion's by the
baselines task, `rank_champion_ahead`) when it answers tonight's evaluation record for those very
tables; everything else is ranked here.

Each contender is scored as it would serve (models_src/serving.py): the champion knows a prefix
of tonight's users and items; users it never saw, and users with no train history (a forward
holdout's new users), get tonight's cold-start list; items it never saw it cannot recommend.
When a baseline wins, it is registered as a version of its own (with its ONNX scorer) and
crowned; the challenger is logged as rejected with the same checks.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import numpy as np
import torch

from models_src.baselines import FittedBaseline
from models_src.checkpoint import load_checkpoint, save_checkpoint
from models_src.config import TrainConfig, like_threshold, rating_scale
from models_src.data import Interactions
from models_src.evaluation import (
    HELD_OUT,
    Protocol,
    SplitResult,
    incompatibility,
    load_results,
    night_record,
    rating_errors,
    rating_summary,
    save_results,
)
from models_src.gate import (
    BASELINE,
    CHALLENGER,
    CHAMPION,
    Contender,
    GateThresholds,
    Staleness,
    Verdict,
    decide,
    ranking_metrics,
    rating_metrics,
)
from models_src.learners import split_for_training
from models_src.runs import evaluation_file, evaluation_key, load_baseline
from models_src.serving import (
    ColdStart,
    ServedModel,
    cold_start_on_val,
    evaluate_served,
    popularity_counts,
)
from tasks.registry.publish import (
    RANKED_AHEAD_FILE,
    SERVED_TABLES_FILE,
    build_scorer,
    load_version_tables,
    publish_baseline,
)
from tasks.registry.registry import (
    champion,
    record_evaluation,
    record_gate_decision,
    slot_of,
    verify_artifacts,
    version_row,
)
from tasks.score.cold_start import record_cold_start_choice

SECONDS_PER_DAY = 86_400


@dataclass
class Night:
    """Tonight's data under one config's split settings: what every contender is scored on."""

    data: Interactions
    splits: dict[str, Interactions]
    protocol: Protocol
    record: dict  # the evaluation record every version registered tonight carries
    rating: bool  # the rating slot (RMSE) rather than the ranking one
    popularity: torch.Tensor
    cold_start: ColdStart | None  # what users without history get (ranking slot)

    @classmethod
    def load(cls, export_path: Path, config: dict, k: int) -> Night:
        data = Interactions.from_parquet(export_path)
        train_config = TrainConfig.from_dict(config)
        splits = split_for_training(data, train_config)
        protocol = Protocol(splits, like_threshold(data, train_config.rating_threshold))
        rating = slot_of(config.get("model", "gat-bpr")) == "rating"
        return cls(
            data,
            splits,
            protocol,
            night_record(data, config, k),
            rating,
            popularity_counts(splits["train"]),
            None if rating else cold_start_on_val(splits, protocol, k),
        )

    def served(self, buffers: dict, scale: tuple[float, float] | None = None) -> ServedModel:
        if self.rating and scale is None:
            scale = rating_scale(self.data)
        return ServedModel(
            buffers,
            self.popularity,
            scale,
            history=self.splits["train"],
            cold_start=self.cold_start,
        )

    def contender(
        self,
        name: str,
        role: str,
        family: str,
        model: ServedModel,
        k: int,
        evaluated: dict[str, SplitResult] | None = None,
    ) -> tuple[Contender, dict]:
        """Per-unit vectors for the gate and the summaries for the report. `evaluated`: parts
        already ranked under tonight's protocol as `model` serves (saved by the task that
        trained or fitted it); the others are ranked here."""
        vectors, tables = {}, {}
        results = dict(evaluated or {})
        missing = tuple(part for part in HELD_OUT if part not in results)
        results |= evaluate_served(self.protocol, model, missing, k) if missing else {}
        for part in HELD_OUT:
            ranked = results[part]
            tables[part] = dict(ranked.summary)
            vectors[part] = dict(ranked.per_user)
            if self.rating:
                data = self.splits[part]
                users, items = torch.from_numpy(data.user), torch.from_numpy(data.item)
                predicted = model.predict_pairs(users, items)
                target = torch.from_numpy(data.rating)
                vectors[part]["squared_error"] = rating_errors(predicted, target)
                tables[part].update(rating_summary(predicted, target))
        return Contender(name, role, family, vectors), tables

    def cold(self) -> np.ndarray | None:
        """The val cold-user mask of the ranking guardrail (None for the rating slot)."""
        return None if self.rating else self.protocol.cold_users("val")


def champion_incompatibility(row: dict, data: Interactions, config: dict, k: int) -> str | None:
    """Why champion `row` cannot be compared with (or warm-start) tonight's models, or None."""
    record = json.loads(row["evaluation_json"]) if row.get("evaluation_json") else None
    why = incompatibility(record, night_record(data, config, k))
    return f"champion v{row['version']} cannot be compared: {why}" if why else None


def _version_contender(
    night: Night, row: dict, ranked_elsewhere: Path | None = None
) -> tuple[ServedModel, dict[str, SplitResult]]:
    """A registered version as it serves, with its ranking made ahead when that ranking is of
    these very tables under tonight's evaluation record (else nothing: it is ranked here). The
    ranking is looked for in the version's files (its train task's), then at `ranked_elsewhere`
    (the champion's, ranked tonight beside training: `rank_champion_ahead`)."""
    verify_artifacts(row)
    model, buffers = _served_version(night, Path(row["artifact_dir"]))
    key = evaluation_key(buffers, night.record)
    ranked = load_results(Path(row["artifact_dir"]) / RANKED_AHEAD_FILE, key)
    if not ranked and ranked_elsewhere is not None:
        ranked = load_results(ranked_elsewhere, key)
    return model, ranked


def _served_version(night: Night, artifact_dir: Path) -> tuple[ServedModel, dict]:
    """A registered version's tables as tonight's model would serve them, and the tables."""
    state = load_version_tables(artifact_dir)
    scale = state.get("rating_range")
    return night.served(state["buffers"], tuple(scale) if scale else None), state["buffers"]


def rank_champion_ahead(champion: dict, night: Night, config: dict, k: int, out: Path) -> str:
    """The champion (`champion`: its registry row's version, artifact_dir and evaluation_json)
    ranked on tonight's val and test (`night`, under `config`'s split) as it serves, saved at
    `out` for the gate: run on the task runner beside training, so the flow's process ranks
    nothing on a night with a champion. The gate checks the champion's files and uses this
    ranking only if it is of the tables it loads under tonight's record. Returns what was done,
    for the log."""
    why = champion_incompatibility(champion, night.data, config, k)
    if why:
        return f"not ranked: {why}"
    model, buffers = _served_version(night, Path(champion["artifact_dir"]))
    results = evaluate_served(night.protocol, model, HELD_OUT, k)
    save_results(out, results, evaluation_key(buffers, night.record))
    return f"champion v{champion['version']} ranked on val and test into {out}"


def rank_run_ahead(run_dir: Path, export_path: Path, k: int) -> None:
    """The run's best checkpoint as it will serve, built and ranked on val and test where it was
    trained (on the task runner, beside other training), saved in the run directory: publish
    exports these tables instead of propagating the graph again, and the gate reuses the
    ranking (`_version_contender`) instead of ranking the challenger in the flow's process."""
    state = load_checkpoint(run_dir / "best_model.pt")
    buffers = dict(build_scorer(state, k).state_dict())
    config, scale = state["config"], state["model_args"].get("rating_range")
    del state
    save_checkpoint(run_dir / SERVED_TABLES_FILE, buffers)
    night = Night.load(export_path, config, k)
    model = night.served(buffers, tuple(scale) if scale else None)
    results = evaluate_served(night.protocol, model, HELD_OUT, k)
    save_results(run_dir / RANKED_AHEAD_FILE, results, evaluation_key(buffers, night.record))


def staleness(champion_record: dict | None, tonight: dict) -> Staleness:
    """How far tonight's data is ahead of what the champion was evaluated on."""
    if not champion_record:
        return Staleness()
    age = None
    if champion_record.get("data_until") is not None and tonight.get("data_until") is not None:
        age = (tonight["data_until"] - champion_record["data_until"]) / SECONDS_PER_DAY
    growth = None
    if champion_record.get("interactions"):
        growth = tonight["interactions"] / champion_record["interactions"] - 1.0
    return Staleness(age, growth)


def gate_version(
    con: duckdb.DuckDBPyConnection,
    version: int,
    export_path: Path,
    models_root: Path,
    thresholds: GateThresholds | None = None,
    baseline_files: dict[str, str] | None = None,
    champion_ranking: Path | None = None,
) -> tuple[Verdict, dict]:
    """Decide who serves tonight among the challenger `version`, the fitted baselines
    (family -> file) and the champion, apply it to the registry, and return the verdict and the
    report's tables (contender -> part -> metrics). `champion_ranking`: where the champion's
    ranking made ahead tonight may be (`rank_champion_ahead`)."""
    t = thresholds or GateThresholds()
    row = version_row(con, version)
    night = Night.load(export_path, json.loads(row["config_json"]), t.k)
    tables: dict[str, dict] = {}
    challenger_name = f"challenger v{version}"
    model, ranked = _version_contender(night, row)
    challenger, tables[challenger_name] = night.contender(
        challenger_name, CHALLENGER, row["kind"], model, t.k, ranked
    )
    fitted = {family: load_baseline(Path(path)) for family, path in (baseline_files or {}).items()}
    baselines = []
    for family, baseline in fitted.items():
        key = evaluation_key(baseline.buffers, night.record)
        evaluated = load_results(evaluation_file(Path(baseline_files[family])), key)
        contender, tables[family] = night.contender(
            family, BASELINE, family, night.served(baseline.buffers), t.k, evaluated
        )
        baselines.append(contender)
    current = champion(con, row["slot"], row["dataset"])
    incomparable, holder = None, None
    if current is not None:
        incomparable = champion_incompatibility(
            current, night.data, json.loads(row["config_json"]), t.k
        )
        if incomparable is None:
            name = f"champion v{current['version']}"
            model, ranked = _version_contender(night, current, champion_ranking)
            holder, tables[name] = night.contender(
                name, CHAMPION, current["kind"], model, t.k, ranked
            )
    verdict = decide(
        challenger,
        baselines,
        holder,
        t,
        rating_metrics() if night.rating else ranking_metrics(t.k),
        staleness(json.loads(current["evaluation_json"]) if holder else None, night.record),
        night.cold() if holder else None,
        incomparable,
    )
    _apply(con, verdict, row, fitted, night, tables, t, models_root, baseline_files or {})
    if night.cold_start is not None:
        record_cold_start_choice(
            con, row["dataset"], night.data.meta.get("snapshot_id"), night.cold_start.to_dict()
        )
    return verdict, tables


def _apply(
    con: duckdb.DuckDBPyConnection,
    verdict: Verdict,
    row: dict,
    fitted: dict[str, FittedBaseline],
    night: Night,
    tables: dict,
    t: GateThresholds,
    models_root: Path,
    baseline_files: dict[str, str],
) -> None:
    """The registry after the verdict: the winner crowned (a baseline registered first), the
    challenger rejected unless it won; one log row per version decided on."""
    log = {"compared": verdict.compared, "thresholds": asdict(t), "rule": verdict.rule}
    reasons = verdict.reasons + verdict.warnings
    record_evaluation(con, row["version"], night.record)
    if verdict.serve_role == BASELINE:
        family = verdict.serve_family
        baseline_version = publish_baseline(
            con,
            fitted[family],
            night.data,
            row["dataset"],
            Path(baseline_files[family]).parent / f"{family}-version",
            models_root,
            t.k,
            tables[family],
            night.record,
            json.loads(row["config_json"]),
        )
        verdict.serve = f"{family} v{baseline_version}"
        record_gate_decision(con, row["version"], False, reasons, **log)
        record_gate_decision(con, baseline_version, True, reasons, **log)
        return
    record_gate_decision(con, row["version"], verdict.serve_role == CHALLENGER, reasons, **log)
