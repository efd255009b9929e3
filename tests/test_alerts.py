"""The failure alert without a server: which block a URL gets, that the server would accept the
automation, and what its message says (tests/test_deployment.py sends a real one)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook
from prefect.server.events.jinja_filters import all_filters
from prefect.server.events.schemas.automations import AutomationCore as ServerAutomation
from prefect.server.utilities.user_templates import (
    register_user_template_filters,
    render_user_template,
)

from tasks.validate.alerts import VALIDATION_FAILED, validation_payload

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def alerts():
    """deployments/alerts.py, a script (deployments/ is no package), loaded by path."""
    spec = importlib.util.spec_from_file_location("encore_alerts", ROOT / "deployments/alerts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render(template: str, **context) -> str:
    register_user_template_filters(all_filters)  # what the server's actions do before rendering
    return asyncio.run(render_user_template(template, context))


REPORT = {
    "status": "failed",
    "dataset": "sample-listens",
    "snapshot_id": 12,
    "failed": [
        {
            "expectation": "expect_column_values_to_be_between",
            "level": "table",
            "column": "n_users",
            "success": False,
            "description": "at least 1000 users",
            "unexpected_count": 1,
            "observed": 53,
            "sample": [53],
        },
        {
            "expectation": "expect_column_values_to_match_regex",
            "level": "row",
            "column": "user_id",
            "success": False,
            "description": "user ids match the id pattern",
            "unexpected_count": 7,
            "observed": None,
            "sample": ["bad id"],
        },
    ],
    "file_errors": [{"path": "/l/x.csv", "error": "x.csv: not UTF-8"}],
    "report_path": "/home/reports/snapshot_00012_sample-listens.json",
}


def test_each_kind_of_url_gets_the_block_that_can_deliver_to_it(alerts):
    plain = alerts.notification_block("https://alerts.example.com/encore")
    assert isinstance(plain, CustomWebhookNotificationBlock)
    assert plain.json_data["text"] == "{{subject}}\n\n{{body}}"
    slack = alerts.notification_block("https://hooks.slack.com/services/T000/B000/XXXX")
    assert isinstance(slack, SlackWebhook)
    assert isinstance(alerts.notification_block("slack://TokenA/TokenB/TokenC/#ml"), SlackWebhook)
    assert isinstance(alerts.notification_block("mailtos://u:p@smtp.example.com"), SlackWebhook)
    with pytest.raises(alerts.AlertSetupError, match="Apprise does not know a nope:// URL"):
        alerts.notification_block("nope://x")
    # what the one-line summary shows of a URL: never an Apprise token or a path
    assert alerts._where("slack://TokenA/TokenB/TokenC") == "slack://..."
    assert alerts._where("http://127.0.0.1:8080/hook/s3cret") == "http://127.0.0.1:8080/..."


def test_the_server_accepts_the_automation_and_its_templates(alerts):
    automation = ServerAutomation.model_validate(alerts.automation(uuid4()).model_dump(mode="json"))
    (runs, validation) = automation.trigger.triggers
    assert runs.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert validation.expect == {VALIDATION_FAILED}
    assert automation.trigger.require == "any"


def test_the_validation_alert_names_the_run_the_stage_what_failed_and_the_report(alerts):
    event = SimpleNamespace(event=VALIDATION_FAILED, payload=validation_payload(REPORT))
    flow_run = SimpleNamespace(name="nightly 2026-01-02 02:00:00 UTC")
    assert render(alerts.SUBJECT, event=event, flow_run=flow_run) == (
        "Encore: validation failed for sample-listens in nightly 2026-01-02 02:00:00 UTC"
    )
    body = render(alerts.BODY, event=event, flow_run=flow_run)
    assert body.splitlines()[:7] == [
        "Flow run: nightly 2026-01-02 02:00:00 UTC",
        "Failed stage: validation of snapshot 12 of sample-listens. It is not trained on; its"
        " champion keeps serving.",
        "Failed expectations:",
        "- at least 1000 users (observed 53)",
        "- user ids match the id pattern: 7 rows failing",
        "- unreadable: x.csv: not UTF-8",
        "Report: /home/reports/snapshot_00012_sample-listens.json",
    ]
    assert "sample" not in event.payload["failed"][0]  # failing ids stay in the report


def test_the_run_alert_names_the_run_its_state_and_the_state_message(alerts):
    event = SimpleNamespace(event="prefect.flow-run.Failed", payload={})
    state = SimpleNamespace(name="Failed", message="NightlyRunFailed: validation failed: x")
    context = {
        "event": event,
        "flow_run": SimpleNamespace(name="nightly A", state=state),
        "flow": SimpleNamespace(name="nightly-retrain"),
        "deployment": SimpleNamespace(name="nightly"),
    }
    assert render(alerts.SUBJECT, **context) == "Encore: nightly A Failed"
    assert render(alerts.BODY, **context).splitlines()[:3] == [
        "Flow run: nightly A (nightly-retrain/nightly)",
        "State: Failed",
        "What failed: NightlyRunFailed: validation failed: x",
    ]
