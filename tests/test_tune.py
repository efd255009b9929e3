"""The tuning job: Optuna studies that persist in the data home, resume after a kill, and whose
best trial the next nightly trains with (recorded with the model version)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from conftest import planted, write_days
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.params import GatBprParams, NightlyParams, RatingParams, TuneParams, search_space
from flows.tune import shares, trial_config
from models_src.config import TrainConfig
from models_src.tuning import (
    Dimension,
    best_params,
    fail_interrupted,
    make_objective,
    open_study,
    run_trials,
    save_plots,
)
from tasks.tune import clear_tuned, load_tuned, set_pinned

TINY_GAT = {"epochs": 2, "batch_size": 512, "embedding_dim": 8, "num_layers": 1}


@pytest.fixture
def planted_export(tmp_path: Path) -> str:
    path = tmp_path / "planted.parquet"
    planted(users=60, items_per_group=12, groups=["a", "b", "c"], seed=0).to_parquet(path)
    return str(path)


def _base(**overrides) -> dict:
    return {**TrainConfig(model="gat-bpr", **TINY_GAT).to_dict(), **overrides}


SMALL_SPACE = {
    "lr": Dimension(low=1e-3, high=1e-1, log=True),
    "negatives": Dimension(choices=(1, 4)),
}


def test_a_study_finds_and_reports_its_best_trial_and_resumes_without_repeating(
    tmp_path, planted_export
):
    journal = tmp_path / "tuning" / "planted-gat-bpr.journal"
    study = open_study(journal, "planted-gat-bpr", "gat-bpr", seed=0)
    objective = make_objective(_base(), planted_export, SMALL_SPACE)
    assert run_trials(study, objective, trials=2) == 2
    # A new process opening the same journal sees both trials and runs only the missing one.
    resumed = open_study(journal, "planted-gat-bpr", "gat-bpr", seed=0)
    assert len(resumed.trials) == 2
    assert run_trials(resumed, objective, trials=3) == 1
    assert run_trials(resumed, objective, trials=3) == 0
    best = best_params(resumed, "planted", "gat-bpr", "recall@10")
    values = [t.value for t in resumed.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert best.value == max(values) and 0.0 < best.value <= 1.0
    assert set(best.params) == {"lr", "negatives"}
    assert 1e-3 <= best.params["lr"] <= 1e-1 and best.params["negatives"] in (1, 4)
    plots = save_plots(resumed, tmp_path / "plots")
    assert [p.name for p in plots] == ["optimization_history.png", "param_importances.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)


def test_a_trial_a_kill_left_running_is_marked_failed_and_not_counted(tmp_path, planted_export):
    journal = tmp_path / "study.journal"
    study = open_study(journal, "s", "gat-bpr")
    study.ask()  # what a killed job leaves behind: a trial that never reported back
    assert fail_interrupted(journal, "s") == 1
    states = [t.state for t in open_study(journal, "s", "gat-bpr").trials]
    assert states == [optuna.trial.TrialState.FAIL]
    objective = make_objective(_base(), planted_export, SMALL_SPACE)
    assert run_trials(open_study(journal, "s", "gat-bpr"), objective, trials=1) == 1


def test_the_pruner_stops_a_trial_whose_curve_is_below_the_median(tmp_path, planted_export):
    study = open_study(tmp_path / "p.journal", "p", "gat-bpr")
    space = {"lr": Dimension(low=1e-9, high=0.1, log=True)}
    objective = make_objective(_base(epochs=5, patience=10), planted_export, space)
    for lr in (0.05, 0.05, 0.05, 1e-9):  # three startup trials that learn, then a hopeless one
        study.enqueue_trial({"lr": lr})
    study.optimize(objective, n_trials=4)
    states = [t.state for t in study.trials]
    assert states[:3] == [optuna.trial.TrialState.COMPLETE] * 3
    assert states[3] == optuna.trial.TrialState.PRUNED
    assert max(study.trials[3].intermediate_values) < 5  # stopped before its last epoch


def test_search_spaces_come_from_the_parameters_and_hold_their_defaults():
    for params in (GatBprParams, RatingParams):
        space = search_space(params)
        assert space, params.__name__
        defaults = params()
        for name, spec in space.items():
            assert name in TrainConfig.__dataclass_fields__, name
            assert Dimension(**spec).contains(getattr(defaults, name)), name
    assert {"lr", "l2", "embedding_dim", "num_layers", "negatives"} <= set(
        search_space(GatBprParams)
    )


def test_tuned_parameters_replace_defaults_but_not_what_the_run_sets():
    tuned = {"study": "ds-gat-bpr", "trial": 7, "params": {"lr": 0.01, "embedding_dim": 128}}
    config = NightlyParams().train_config("gat-bpr", tuned)
    assert (config["lr"], config["embedding_dim"]) == (0.01, 128)
    assert config["tuned_from"] == "study ds-gat-bpr trial 7"
    explicit = NightlyParams.model_validate({"gat_bpr": {"embedding_dim": 32}})
    config = explicit.train_config("gat-bpr", tuned)
    assert (config["lr"], config["embedding_dim"]) == (0.01, 32)
    warm = NightlyParams().warm_train_config("gat-bpr", tuned)
    assert warm["lr"] == pytest.approx(0.01 * NightlyParams().warm_start_lr_factor)
    assert "tuned_from" not in NightlyParams().train_config("gat-bpr")


def test_trials_split_over_workers_and_start_from_the_nightly_config():
    assert shares(5, 2) == [3, 2] and shares(1, 4) == [1] and shares(4, 1) == [4]
    params = TuneParams(max_epochs=4)
    config = trial_config(params, "gat-bpr")
    assert config["epochs"] == 4 and "tuned_from" not in config
    assert TrainConfig.from_dict(config).model == "gat-bpr"


def test_pin_and_clear_need_something_stored(tmp_path):
    with pytest.raises(FileNotFoundError, match="encore tune --dataset ds"):
        set_pinned(tmp_path, "ds", "gat-bpr", True)
    assert clear_tuned(tmp_path, "ds", "gat-bpr") is False


# --- The flow on the sample, under the session's Prefect server -------------------------------


def artifacts_of(flow_run_id) -> dict:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found if a.key}


@pytest.fixture
def tuned_home(flow_home, prefect_api):
    from flows.ingest import ingest

    write_days(flow_home, range(3))
    ingest(datasets=["sample-listens"], thresholds={"min_users": 5, "min_items": 5})
    return flow_home


QUICK_TUNE = {
    "datasets": ["sample-listens"],
    "models": ["gat-bpr"],
    "trials": 3,
    "max_epochs": 2,
    "nightly": {
        "gat_bpr": {"batch_size": 4096, "embedding_dim": 16, "num_layers": 1},
        "validation": {"min_users": 5, "min_items": 5},
    },
}


@pytest.mark.slow
def test_tune_flow_stores_the_best_trial_and_the_next_nightly_trains_with_it(tuned_home):
    from flows.nightly import nightly_retrain
    from flows.tune import tune
    from tasks.warehouse.schema import warehouse

    home = tuned_home
    state = tune(TuneParams.model_validate(QUICK_TUNE), return_state=True)
    result = state.result()
    (study,) = result["studies"]
    artifacts = artifacts_of(state.state_details.flow_run_id)
    top = artifacts["tuning-sample-listens-gat-bpr-top-trials"]
    assert len(json.loads(top.data)) == 3  # the table of the best trials, one row each
    summary = artifacts["tuning-sample-listens-gat-bpr"].data
    assert summary.count("data:image/png;base64,") == 2  # optimization history, importances
    name = study["study"]
    assert name.startswith("sample-listens-gat-bpr-snapshot") and study["seeded_from"] is None
    assert (study["ran_now"], study["trials"]) == (3, 3) and study["stored"]
    stored = load_tuned(home.root, "sample-listens", "gat-bpr")
    assert stored["trial"] == study["best"]["trial"] and not stored["pinned"]
    assert stored["study"] == name

    # Killed mid-trial: the next run marks that trial failed and runs only what is missing.
    journal = home.root / "tuning" / "sample-listens-gat-bpr.journal"
    open_study(journal, name, "gat-bpr").ask()
    again = tune(TuneParams.model_validate({**QUICK_TUNE, "trials": 4}))
    assert again["studies"][0]["ran_now"] == 1 and again["studies"][0]["resumed_from"] == 3

    # A new snapshot gets a new study, which starts from the stored best.
    from flows.ingest import ingest

    write_days(home, range(3, 4))
    ingest(datasets=["sample-listens"], thresholds={"min_users": 5, "min_items": 5})
    best_so_far = load_tuned(home.root, "sample-listens", "gat-bpr")
    week = tune(TuneParams.model_validate({**QUICK_TUNE, "trials": 1}))["studies"][0]
    assert week["study"] != name and week["ran_now"] == 1
    assert week["seeded_from"] == f"study {name} trial {best_so_far['trial']}"
    reopened = open_study(journal, week["study"], "gat-bpr")
    assert reopened.trials[0].params == best_so_far["params"]

    # Pinned parameters survive a later study.
    set_pinned(home.root, "sample-listens", "gat-bpr", True)
    pinned = load_tuned(home.root, "sample-listens", "gat-bpr")
    third = tune(TuneParams.model_validate({**QUICK_TUNE, "trials": 2}))
    assert not third["studies"][0]["stored"]
    assert load_tuned(home.root, "sample-listens", "gat-bpr") == pinned

    night = NightlyParams.model_validate(
        {
            "datasets": ["sample-listens"],
            "models": {"sample-listens": ["gat-bpr"]},
            "gat_bpr": {"epochs": 2, "batch_size": 4096, "embedding_dim": 16, "num_layers": 1},
            "validation": {"min_users": 5, "min_items": 5},
            "gate": {"baselines": []},
        }
    )
    outcome = next(o for o in nightly_retrain(night)["outcomes"] if o["model"] == "gat-bpr")
    assert outcome["tuned_from"] == f"study {pinned['study']} trial {pinned['trial']}"
    with warehouse(home.warehouse) as con:
        (config_json,) = con.execute(
            "SELECT config_json FROM model_versions WHERE dataset = 'sample-listens'"
            " AND kind = 'gat-bpr' ORDER BY version LIMIT 1"
        ).fetchone()
    config = json.loads(config_json)
    assert config["tuned_from"] == outcome["tuned_from"]
    # What the run sets itself is kept; it once passed only when the study drew batch 4096.
    set_by_run = {"embedding_dim": 16, "num_layers": 1, "batch_size": 4096}
    searched = set(pinned["params"]) - set(set_by_run)
    assert searched and all(config[name] == pinned["params"][name] for name in searched)
    assert {name: config[name] for name in set_by_run} == set_by_run


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["tune", "--dataset", "nope"], 1, "no passed snapshot to tune on for nope"),
        (["tune"], 1, "nothing to tune yet"),
        (["tune", "--pin"], 2, "name the dataset"),
        (["tune", "--pin", "--clear", "--dataset", "d"], 2, "choose one of"),
        (["tune", "--clear", "--dataset", "d"], 1, "no tuned parameters stored for d"),
    ],
)
def test_tune_command_refuses_in_one_line(tmp_path, monkeypatch, args, code, expected):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("ENCORE_HOME", str(tmp_path))
    done = CliRunner().invoke(app, args)
    assert done.exit_code == code, done.output
    assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_tune_show_pin_and_clear_what_a_study_stored(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app
    from tasks.tune import _write, best_path

    record = {"dataset": "d", "model": "gat-bpr", "study": "d-gat-bpr", "trial": 4,
              "metric": "recall@10", "value": 0.25, "params": {"lr": 0.01, "num_layers": 2},
              "trials": 9, "pinned": False}  # fmt: skip
    _write(best_path(tmp_path, "d", "gat-bpr"), record)
    monkeypatch.setenv("ENCORE_HOME", str(tmp_path))
    runner = CliRunner()
    shown = runner.invoke(app, ["tune", "--show"])
    assert "d gat-bpr: val recall@10 0.2500 (trial 4 of 9" in shown.stdout
    assert "lr=0.01, num_layers=2" in shown.stdout
    assert runner.invoke(app, ["tune", "--pin", "--dataset", "d"]).exit_code == 0
    assert load_tuned(tmp_path, "d", "gat-bpr")["pinned"] is True
    assert "[pinned]" in runner.invoke(app, ["tune", "--show", "--dataset", "d"]).stdout
    cleared = runner.invoke(app, ["tune", "--clear", "--dataset", "d"])
    assert "the nightly uses its defaults" in cleared.stdout
    assert load_tuned(tmp_path, "d", "gat-bpr") is None
