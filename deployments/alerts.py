"""Failure alerts for the deployed flows: `make deploy` runs this after `prefect deploy`.

With ENCORE_ALERT_URL set, it creates or replaces, on the Prefect server at PREFECT_API_URL, a
notification block and one automation, `encore-failure-alert`, which sends a message when a run of
an Encore flow (nightly-retrain, batch-score, tune) ends Failed or Crashed, and when a snapshot
fails validation (the `encore.validation.failed` event of tasks/validate/alerts.py: the night goes
on with the other datasets, so the run itself fails only later). The message names the run, its
state and what failed (the state message names the stage), with a link to the run in the UI.

Without ENCORE_ALERT_URL it deletes both: deploying again without the URL turns alerts off.
Running it twice leaves one automation, not two.

    ENCORE_ALERT_URL=https://alerts.example.com/encore python deployments/alerts.py
    ENCORE_ALERT_URL='slack://TokenA/TokenB/TokenC/#ml-alerts' python deployments/alerts.py
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit
from uuid import UUID

from tasks.home import configure_environment

configure_environment()  # PREFECT_HOME inside the data home, before Prefect loads

import httpx  # noqa: E402
from prefect.automations import (  # noqa: E402
    AutomationCore,
    CompoundTrigger,
    EventTrigger,
    Posture,
    SendNotification,
)
from prefect.blocks.abstract import NotificationBlock  # noqa: E402
from prefect.blocks.notifications import (  # noqa: E402
    CustomWebhookNotificationBlock,
    SlackWebhook,
)
from prefect.client.orchestration import SyncPrefectClient, get_client  # noqa: E402
from prefect.exceptions import ObjectNotFound, PrefectException  # noqa: E402

from tasks.validate.alerts import VALIDATION_FAILED  # noqa: E402

NAME = "encore-failure-alert"  # the automation's and the notification block's name
FLOWS = ["nightly-retrain", "batch-score", "tune"]  # the flows of deployments/prefect.yaml
SLACK_HOSTS = {"hooks.slack.com", "hooks.slack-gov.com"}
BLOCK_TYPES: tuple[type[NotificationBlock], ...] = (CustomWebhookNotificationBlock, SlackWebhook)
OFF = "ENCORE_ALERT_URL is not set: no failure alert created"

# Jinja, rendered by the server when the automation fires. `flow_run` is the first flow run among
# the event's resources: the failed run itself, or for a validation failure the nightly run that
# validated (tasks/validate/alerts.py puts it first, before the `ingest` subflow's run).
SUBJECT = (
    "Encore: "
    "{% if event.event == '" + VALIDATION_FAILED + "' %}"
    "validation failed for {{ event.payload.dataset }} in {{ flow_run.name }}"
    "{% else %}{{ flow_run.name }} {{ flow_run.state.name }}{% endif %}"
)
BODY = (
    "{% if event.event == '" + VALIDATION_FAILED + "' %}"
    "Flow run: {{ flow_run.name }}\n"
    "Failed stage: validation of snapshot {{ event.payload.snapshot_id }} of "
    "{{ event.payload.dataset }}. It is not trained on; its champion keeps serving.\n"
    "Failed expectations:\n"
    "{% for f in event.payload.failed %}"
    "- {{ f.description }}"
    "{% if f.level == 'row' %}: {{ f.unexpected_count }} rows failing{% endif %}"
    "{% if f.observed is not none %} (observed {{ f.observed }}){% endif %}\n"
    "{% endfor %}"
    "{% for error in event.payload.unreadable_files %}- unreadable: {{ error }}\n{% endfor %}"
    "Report: {{ event.payload.report_path }}\n"
    "{% else %}"
    "Flow run: {{ flow_run.name }} ({{ flow.name }}"
    "{% if deployment %}/{{ deployment.name }}{% endif %})\n"
    "State: {{ flow_run.state.name }}\n"
    "What failed: {{ flow_run.state.message }}\n"
    "{% endif %}"
    "Run: {{ flow_run|ui_url }}"
)


class AlertSetupError(Exception):
    """A mistake or an unreachable server, said in one line (no traceback)."""


def notification_block(url: str) -> NotificationBlock:
    """The block that delivers to `url`: JSON POSTed to a plain http(s) endpoint, Apprise for the
    rest (a Slack incoming webhook, slack://, msteams://, mailto://, discord://, ...)."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname not in SLACK_HOSTS:
        # "text" carries subject and body together for receivers that read only that field
        # (Slack-compatible webhooks: Mattermost, Rocket.Chat, Google Chat).
        return CustomWebhookNotificationBlock(
            name=NAME,
            url=url,
            json_data={
                "subject": "{{subject}}",
                "body": "{{body}}",
                "text": "{{subject}}\n\n{{body}}",
            },
        )
    if parts.scheme not in ("http", "https"):
        _check_apprise_knows(url)
    # Prefect ships no generic Apprise block the server can load (AppriseNotificationBlock is
    # abstract, and a block type of ours would not be importable in the server's process).
    # SlackWebhook hands Apprise any URL that is not a hooks.slack.com one unchanged, and keeps
    # it as a secret.
    return SlackWebhook(url=url, notify_type="failure")


def _check_apprise_knows(url: str) -> None:
    from apprise import Apprise

    if not Apprise().add(url):
        scheme = urlsplit(url).scheme or url.split(":", 1)[0]
        raise AlertSetupError(
            f"ENCORE_ALERT_URL: Apprise does not know a {scheme}:// URL of this shape "
            "(see https://github.com/caronc/apprise/wiki)"
        )


def trigger() -> CompoundTrigger:
    """Any failed or crashed run of an Encore flow, or any failed validation."""
    failed_runs = EventTrigger(
        expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        # Encore's flows only; their subflows (ingest, train) fail into them.
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOWS},
        posture=Posture.Reactive,
        threshold=1,
    )
    failed_validation = EventTrigger(
        expect={VALIDATION_FAILED},
        match={"prefect.resource.id": "encore.dataset.*"},
        posture=Posture.Reactive,
        threshold=1,
    )
    # require="any": each child's firing fires the automation at once, with its own event for
    # the template, so one automation (one thing to replace or delete) covers both.
    return CompoundTrigger(require="any", triggers=[failed_runs, failed_validation])


def automation(block_id: UUID) -> AutomationCore:
    return AutomationCore(
        name=NAME,
        description=(
            f"Encore failure alert (deployments/alerts.py): a run of {', '.join(FLOWS)} "
            "ended Failed or Crashed, or a snapshot failed validation."
        ),
        enabled=True,
        trigger=trigger(),
        actions=[SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)],
    )


def turn_on(client: SyncPrefectClient, url: str) -> NotificationBlock:
    """Save the block (same name: replaced in place) and replace the automation."""
    block = notification_block(url)
    block_id = block.save(NAME, overwrite=True)
    for other in BLOCK_TYPES:  # the URL's kind changed since the last deploy
        if not isinstance(block, other):
            _delete_block(client, other)
    _delete_automations(client)
    client.create_automation(automation(block_id))
    return block


def turn_off(client: SyncPrefectClient) -> bool:
    """Delete the automation and its block; True when there was something to delete."""
    removed = _delete_automations(client)
    for kind in BLOCK_TYPES:
        removed = _delete_block(client, kind) or removed
    return removed


def _delete_automations(client: SyncPrefectClient) -> bool:
    found = client.read_automations_by_name(NAME)
    for existing in found:
        client.delete_automation(existing.id)
    return bool(found)


def _delete_block(client: SyncPrefectClient, kind: type[NotificationBlock]) -> bool:
    try:
        document = client.read_block_document_by_name(NAME, kind.get_block_type_slug())
    except ObjectNotFound:
        return False
    client.delete_block_document(document.id)
    return True


def _where(url: str) -> str:
    """The URL without what may be a secret: an http(s) URL's path, anything after an Apprise
    scheme (slack://TokenA/TokenB/...)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return f"{parts.scheme}://..."
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{'/...' if parts.path.strip('/') else ''}"


def main() -> int:
    url = os.environ.get("ENCORE_ALERT_URL", "").strip()
    api = os.environ.get("PREFECT_API_URL", "")
    try:
        if not api:
            # Without it Prefect would start a throwaway server and set the alert up there.
            raise AlertSetupError("PREFECT_API_URL is not set: run `make deploy`, or export it")
        with get_client(sync_client=True) as client:
            unreachable = client.api_healthcheck()
            if unreachable is not None:
                raise AlertSetupError(
                    f"cannot reach the Prefect server at {api} ({unreachable!r}); "
                    "start it with `make server`"
                )
            if not url:
                removed = turn_off(client)
                print(OFF + ("; the previous one is deleted" if removed else ""))
                return 0
            block = turn_on(client, url)
    except AlertSetupError as error:
        print(f"alerts: {error}", file=sys.stderr)
        return 1
    except (httpx.HTTPError, PrefectException, OSError, ValueError) as error:
        print(f"alerts: could not set up the failure alert at {api}: {error!r}", file=sys.stderr)
        return 1
    print(
        f"failure alert {NAME!r}: failed or crashed runs of {', '.join(FLOWS)} and failed "
        f"validations -> {_where(url)} ({block.get_block_type_slug()} block {NAME!r})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
