"""deployments/prefect.yaml and serve.py without a server: what `prefect deploy` would read.

`prefect deploy` only prints a warning and skips a deployment whose configuration does not
validate, so a typo would silently drop the nightly schedule; these checks fail instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.flows import Flow, load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"


@pytest.fixture(scope="module")
def config() -> PrefectYamlModel:
    return PrefectYamlModel.model_validate(yaml.safe_load(PREFECT_YAML.read_text()))


def test_prefect_yaml_validates_and_names_both_deployments(config):
    names = {(d.entrypoint, d.name) for d in config.deployments}
    assert names == {
        ("flows/nightly.py:nightly_retrain", "nightly"),
        ("flows/batch_score.py:batch_score", "manual"),
    }
    (pull,) = config.pull
    assert pull == {
        "prefect.deployments.steps.set_working_directory": {
            "directory": "{{ $ENCORE_PROJECT_ROOT }}"
        }
    }
    for deployment in config.deployments:
        assert deployment.work_pool.name == "encore-process"
        assert deployment.work_pool.job_variables["env"]["ENCORE_HOME"] == "{{ $ENCORE_HOME }}"
        assert deployment.concurrency_limit.limit == 1
        assert deployment.concurrency_limit.collision_strategy == "ENQUEUE"


def test_nightly_is_on_the_templated_cron_and_scoring_has_no_schedule(config):
    by_name = {d.name: d for d in config.deployments}
    (schedule,) = by_name["nightly"].schedules
    assert schedule.cron == "{{ $ENCORE_CRON }}"
    assert schedule.timezone == "{{ $ENCORE_TIMEZONE }}"
    assert by_name["manual"].schedules == []


@pytest.mark.parametrize(
    ("entrypoint", "parameters"),
    [
        ("flows/nightly.py:nightly_retrain", {}),
        ("flows/nightly.py:nightly_retrain", {"params": {"gat_bpr": {"epochs": 20}}}),
        ("flows/batch_score.py:batch_score", {}),
        ("flows/batch_score.py:batch_score", {"dataset": "sample-listens", "kind": "rating"}),
    ],
)
def test_entrypoints_load_as_flows_and_accept_their_run_parameters(entrypoint, parameters):
    flow = load_flow_from_entrypoint(str(ROOT / entrypoint))
    assert isinstance(flow, Flow)
    flow.validate_parameters(parameters)


def test_a_mistyped_parameter_is_refused_before_the_run():
    flow = load_flow_from_entrypoint(str(ROOT / "flows/nightly.py:nightly_retrain"))
    with pytest.raises(Exception, match="epoch"):
        flow.validate_parameters({"params": {"gat_bpr": {"epoch": 20}}})
