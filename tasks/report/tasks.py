"""The night's run report as a Prefect task: written to the data home and shown as an artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.files import write_text_atomically
from tasks.report.report import metrics_rows, nightly_report_markdown, rounded_rows


@task(name="run report", task_run_name="run report")
def publish_night_report(night: dict, reports_dir: str) -> dict:
    """The run report: a markdown artifact, a metrics table artifact and a file under reports/."""
    text = nightly_report_markdown(night)
    path = Path(reports_dir) / f"nightly-{night['stamp']}.md"
    write_text_atomically(path, text)
    create_markdown_artifact(
        markdown=text,
        key="nightly-report",
        description="Nightly retrain: " + ("; ".join(night["problems"]) or "completed"),
    )
    rows = [row for outcome in night["outcomes"] for row in metrics_rows(outcome)]
    if rows:
        create_table_artifact(
            table=rounded_rows(rows),
            key="nightly-metrics",
            description="Challenger vs champion, per split",
        )
    return {"path": str(path), "markdown": text}
