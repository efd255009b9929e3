"""The nightly deployment as a data team runs it: a real `prefect server` on a loopback port, the
work pool and deployments from deployments/prefect.yaml, a real worker, `prefect deployment run`,
the failure alert (deployments/alerts.py) posting to a local HTTP receiver, and the Prefect UI
rendered by headless Chromium.

One deployed run is shared by the integration and the UI checks (module fixture): starting a
server, a worker and a flow-run process costs ~30 s, the run itself a minute on the tiny sample.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import write_days

from flows.cli import SAMPLE_SOURCES
from tasks.home import EncoreHome

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# One API request's socket timeout. Generous: while the flow run trains on both cores, the server
# (SQLite, one event loop) can stall for seconds; a CI run once timed a poll out at 10 s.
REQUEST_TIMEOUT = 60
SAMPLE_DATASETS = ("sample-listens", "sample-ratings")
QUICK_PARAMS = {
    "params": {
        # A smaller GAT-BPR than the nightly default: these tests check the flow, not quality.
        "gat_bpr": {"epochs": 3, "batch_size": 4096, "embedding_dim": 32, "num_layers": 1},
        "rating": {"epochs": 3},
        "validation": {"min_users": 5, "min_items": 5},
    }
}


ALERT_NAME = "encore-failure-alert"  # deployments/alerts.py's automation and block
ALERTS_OFF = "ENCORE_ALERT_URL is not set: no failure alert created"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AlertReceiver:
    """The webhook end of the failure alert: a loopback HTTP server that keeps every JSON body
    POSTed to it. `wait_for` blocks on a condition, so a test waits for the alert, not a time."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._arrived:
                    receiver.posts.append(json.loads(body))
                    receiver._arrived.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:  # the test's output, not the server's log
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/encore-alert"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait_for(self, done: Callable[[list[dict]], bool], timeout: float) -> list[dict]:
        with self._arrived:
            if not self._arrived.wait_for(lambda: done(self.posts), timeout):
                raise TimeoutError(f"alerts after {timeout} s: {json.dumps(self.posts)[:3000]}")
            return list(self.posts)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Deployed:
    api: str
    ui: str
    env: dict
    home: EncoreHome
    run_id: str
    deploy_output: str
    alerts: AlertReceiver
    alerts_output: str
    worker_log: Path
    server_log: Path

    def get(self, path: str) -> dict | list:
        with urllib.request.urlopen(f"{self.api}{path}", timeout=REQUEST_TIMEOUT) as response:
            return json.load(response)

    def post(self, path: str, body: dict) -> dict | list:
        request = urllib.request.Request(
            f"{self.api}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return json.load(response)


def _stop(process: subprocess.Popen | None, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds (a worker may ignore SIGTERM for a while)."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _wait_healthy(api: str, server: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                if json.load(response) is True:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def _prefect(env: dict, *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [PREFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{output}"
    return output


def _alerts(env: dict, url: str) -> str:
    """deployments/alerts.py as `make deploy` runs it, with ENCORE_ALERT_URL set to `url`."""
    done = subprocess.run(
        [sys.executable, "deployments/alerts.py"],
        env={**env, "ENCORE_ALERT_URL": url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"deployments/alerts.py failed:\n{output}"
    return output


def _wait_for_run(
    deployed: Deployed, worker_log: Path, server_log: Path, timeout: float = 400
) -> dict:
    """Poll the run until it ends. A poll that fails (a socket timeout or reset while the server is
    starved of CPU) is retried until the deadline: the run's outcome, not one poll, is the test."""
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while time.monotonic() < deadline:
        try:
            run = deployed.get(f"/flow_runs/{deployed.run_id}")
        except OSError as error:
            last_error = error
        else:
            if run["state"]["type"] in TERMINAL:
                return run
        time.sleep(1)
    raise TimeoutError(
        f"flow run not finished after {timeout} s (last poll error: {last_error!r}):\n"
        f"worker:\n{worker_log.read_text()[-4000:]}\nserver:\n{server_log.read_text()[-3000:]}"
    )


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Iterator[Deployed]:
    base = tmp_path_factory.mktemp("deployment")
    home = EncoreHome(base / "home").ensure()
    home.sources_file.write_text(SAMPLE_SOURCES)
    write_days(home, range(3))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "ENCORE_HOME": str(home.root),
        "PREFECT_HOME": str(base / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        "MPLCONFIGDIR": str(home.cache / "matplotlib"),
        "XDG_CACHE_HOME": str(home.cache),
        "ENCORE_PROJECT_ROOT": str(ROOT),
        "ENCORE_CRON": "0 2 * * *",
        "ENCORE_TUNE_CRON": "0 8 * * 6",
        "ENCORE_TIMEZONE": "UTC",
    }
    server_log, worker_log = base / "server.log", base / "worker.log"
    server = worker = None
    alerts = AlertReceiver()
    try:
        with server_log.open("w") as log:
            server = subprocess.Popen(
                [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait_healthy(api, server, server_log)
        _prefect(env, "work-pool", "create", "encore-process", "--type", "process")
        deploy_output = _prefect(
            env, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"
        )
        alerts_output = _alerts(env, alerts.url)
        with worker_log.open("w") as log:
            worker = subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", "encore-process"],
                env=env,
                cwd=base,  # the deployment's pull step, not the cwd, must find the project
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        output = _prefect(
            env,
            "deployment",
            "run",
            "nightly-retrain/nightly",
            "--params",
            json.dumps(QUICK_PARAMS),
        )
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", output).group(1)
        result = Deployed(
            api=api,
            ui=f"http://127.0.0.1:{port}",
            env=env,
            home=home,
            run_id=run_id,
            deploy_output=deploy_output,
            alerts=alerts,
            alerts_output=alerts_output,
            worker_log=worker_log,
            server_log=server_log,
        )
        _wait_for_run(result, worker_log, server_log)
        yield result
    finally:
        _stop(worker, grace=20)  # the worker first: it reports to the server
        _stop(server, grace=20)
        alerts.close()


@pytest.mark.integration
def test_deployment_runs_nightly_through_a_real_server_and_worker(deployed):
    assert "Skipping deployment" not in deployed.deploy_output
    run = deployed.get(f"/flow_runs/{deployed.run_id}")
    assert run["state"]["type"] == "COMPLETED", run["state"]
    artifacts = deployed.post(
        "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [deployed.run_id]}}}
    )
    by_key = {a["key"]: a for a in artifacts if a["key"]}
    assert {"nightly-report", "nightly-metrics"} <= set(by_key)
    report = by_key["nightly-report"]["data"]
    assert "COMPLETED" in report
    assert report.count("PROMOTED v") + report.count("BASELINE SERVES") == 3
    assert "recall@10" in by_key["nightly-metrics"]["data"]
    # The flow ran in the data home the deployment named, and wrote the recommendations there.
    assert list(deployed.home.reports.glob("nightly-*.md"))
    exports = sorted(p.name for p in (deployed.home.root / "exports").glob("recommendations_*"))
    assert exports == [
        "recommendations_sample-listens_ranking.parquet",
        "recommendations_sample-ratings_ranking.parquet",
    ]
    cold_start = sorted(p.name for p in (deployed.home.root / "exports").glob("cold_start_*"))
    assert cold_start == ["cold_start_sample-listens.parquet", "cold_start_sample-ratings.parquet"]


@pytest.mark.integration
def test_deployments_carry_the_cron_schedule_and_the_one_at_a_time_limit(deployed):
    nightly = deployed.get("/deployments/name/nightly-retrain/nightly")
    (schedule,) = nightly["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *"
    assert schedule["schedule"]["timezone"] == "UTC"
    assert nightly["global_concurrency_limit"]["limit"] == 1
    assert nightly["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert nightly["pull_steps"][0]["prefect.deployments.steps.set_working_directory"] == {
        "directory": str(ROOT)
    }
    scheduled = deployed.post(
        "/flow_runs/filter",
        {
            "deployments": {"id": {"any_": [nightly["id"]]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": 5,
        },
    )
    assert scheduled, "the scheduler created no runs from the cron schedule"
    assert all(r["expected_start_time"][11:19] == "02:00:00" for r in scheduled)
    manual = deployed.get("/deployments/name/batch-score/manual")
    assert manual["schedules"] == []
    weekly = deployed.get("/deployments/name/tune/weekly")
    (tuning,) = weekly["schedules"]
    assert tuning["schedule"]["cron"] == "0 8 * * 6"
    assert weekly["global_concurrency_limit"]["limit"] == 1


def _alert_named(posts: list[dict], subject: str) -> dict | None:
    found = [p for p in posts if p["subject"] == subject]
    assert len(found) <= 1, f"the alert {subject!r} came {len(found)} times"
    return found[0] if found else None


@pytest.fixture(scope="module")
def failed_night(deployed) -> dict:
    """A second night that fails: tonight's files, and a threshold no sample can meet, so both
    snapshots fail validation, the night trains nothing and ends Failed within seconds."""
    write_days(deployed.home, range(3, 4))
    params = {"params": {**QUICK_PARAMS["params"], "validation": {"min_users": 1_000_000}}}
    output = _prefect(
        deployed.env, "deployment", "run", "nightly-retrain/nightly", "--params", json.dumps(params)
    )
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", output).group(1)
    failing = dataclasses.replace(deployed, run_id=run_id)
    return _wait_for_run(failing, deployed.worker_log, deployed.server_log, timeout=240)


@pytest.mark.integration
def test_a_failing_night_alerts_the_webhook_with_its_run_name_failed_stage_and_link(
    deployed, failed_night
):
    assert f"failure alert {ALERT_NAME!r}" in deployed.alerts_output
    run = failed_night
    run_id = run["id"]
    assert run["state"]["type"] == "FAILED", run["state"]

    name, link = run["name"], f"{deployed.ui}/runs/flow-run/{run_id}"
    failed = f"Encore: {name} Failed"
    validations = [f"Encore: validation failed for {d} in {name}" for d in SAMPLE_DATASETS]
    posts = deployed.alerts.wait_for(
        lambda posts: all(_alert_named(posts, s) for s in [failed, *validations]), timeout=60
    )
    # The run's alert: its name, its state, the stage that failed (the state message) and a link.
    body = _alert_named(posts, failed)["body"]
    assert f"Flow run: {name} (nightly-retrain/nightly)" in body, body
    assert "State: Failed" in body, body
    assert all(f"validation failed: {dataset}" in body for dataset in SAMPLE_DATASETS), body
    assert f"Run: {link}" in body, body
    # Each dataset's validation alert, sent while the night went on: the nightly run (not its
    # ingest subflow), the stage, the failed expectation and the report.
    for subject, dataset in zip(validations, SAMPLE_DATASETS, strict=True):
        alert = _alert_named(posts, subject)
        body = alert["body"]
        assert f"Flow run: {name}\n" in body, body
        assert re.search(rf"Failed stage: validation of snapshot \d+ of {dataset}\.", body), body
        assert "\n- at least 1000000 users (observed " in body, body
        assert re.search(rf"Report: \S+snapshot_\d+_{dataset}\.json", body), body
        assert f"Run: {link}" in body, body
        assert alert["text"] == f"{alert['subject']}\n\n{alert['body']}"
    # The first night completed: nothing was sent about it.
    assert not [p for p in posts if deployed.run_id in p["body"]]


@pytest.mark.integration
def test_deploying_again_replaces_the_alert_and_without_a_url_removes_it(deployed):
    def named(kind: str) -> list[dict]:
        body = {kind: {"name": {"any_": [ALERT_NAME]}}}
        return deployed.post(f"/{kind}/filter", body)

    _alerts(deployed.env, deployed.alerts.url)
    (automation,) = named("automations")
    assert automation["enabled"]
    (block,) = named("block_documents")
    assert automation["actions"][0]["block_document_id"] == block["id"]
    assert block["block_type"]["slug"] == "custom-webhook"

    assert _alerts(deployed.env, "").startswith(f"{ALERTS_OFF}; the previous one is deleted")
    assert named("automations") == [] and named("block_documents") == []


def chromium_dom(url: str, scratch: Path, screenshot: Path | None = None) -> str:
    """Render `url` in headless Chromium; HOME and XDG dirs point into `scratch` so nothing is
    written to ~. Without --virtual-time-budget the Prefect UI's data never arrives."""
    scratch.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(scratch),
        "XDG_CONFIG_HOME": str(scratch / "config"),
        "XDG_CACHE_HOME": str(scratch / "cache"),
    }
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        f"--user-data-dir={scratch / 'profile'}",
        "--virtual-time-budget=5000",
        "--window-size=1400,1000",
    ]
    if screenshot is not None:
        subprocess.run(
            [CHROMIUM, *flags, f"--screenshot={screenshot}", url],
            env=env,
            capture_output=True,
            timeout=90,
        )
    done = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", url], env=env, capture_output=True, text=True, timeout=90
    )
    return done.stdout


def keep_screenshot(rendered: Path, name: str) -> None:
    """With ENCORE_SCREENSHOTS=<folder> (docs/images when refreshing the docs' pictures), the
    test's screenshot is copied there: the docs show the UI this test checked."""
    folder = os.environ.get("ENCORE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rendered, Path(folder) / name)


@pytest.mark.e2e
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_the_prefect_ui_shows_the_completed_run_and_its_report(deployed, tmp_path):
    run_page = chromium_dom(
        f"{deployed.ui}/runs/flow-run/{deployed.run_id}", tmp_path, tmp_path / "flow-run.png"
    )
    assert ">Completed<" in run_page  # the state badge's text
    assert re.search(r"<title>Flow Run: nightly \d{4}-\d\d-\d\d", run_page)
    assert (tmp_path / "flow-run.png").stat().st_size > 10_000
    keep_screenshot(tmp_path / "flow-run.png", "prefect-ui-night.png")

    (report,) = deployed.post(
        "/artifacts/filter",
        {
            "artifacts": {
                "flow_run_id": {"any_": [deployed.run_id]},
                "key": {"any_": ["nightly-report"]},
            }
        },
    )
    artifact_page = chromium_dom(
        f"{deployed.ui}/artifacts/artifact/{report['id']}", tmp_path, tmp_path / "report.png"
    )
    assert "Artifact: nightly-report" in artifact_page
    assert "markdown-renderer" in artifact_page and "Nightly retrain" in artifact_page
    # Every training curve the report embeds (base64 PNG: one per trained model, GAT-BPR on the
    # listens, GAT-BPR and the rating model on the ratings) renders as an image in the UI.
    embedded = report["data"].count("](data:image/png;base64,")
    assert embedded >= 3
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', artifact_page)) == embedded


@pytest.mark.e2e
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_the_prefect_ui_shows_the_failed_stage_failed_where_it_happened(
    deployed, failed_night, tmp_path
):
    """The failing night's ingest subflow says Failed on its own page (not only its parent), and
    its validate tasks are the ones that failed. The screenshot stays in the test's temp dir."""
    (subflow,) = deployed.post(
        "/flow_runs/filter",
        {"flow_runs": {"parent_flow_run_id": {"any_": [failed_night["id"]]}}},
    )
    assert subflow["state"]["type"] == "FAILED", subflow["state"]
    assert subflow["state"]["message"].startswith("validation failed for sample-listens")
    ingest_page = chromium_dom(
        f"{deployed.ui}/runs/flow-run/{subflow['id']}", tmp_path, tmp_path / "ingest.png"
    )
    assert ">Failed<" in ingest_page
    assert re.search(r"<title>Flow Run: ingest all datasets", ingest_page)
    assert (tmp_path / "ingest.png").stat().st_size > 10_000  # the graph, with the red tasks
    keep_screenshot(tmp_path / "ingest.png", "prefect-ui-failed-ingest.png")
    # The graph is a canvas: which tasks it draws red is read from the API it draws from.
    task_runs = deployed.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [subflow["id"]]}}})
    states = {t["name"]: t["state"]["type"] for t in task_runs}
    failed = sorted(name for name, state in states.items() if state == "FAILED")
    # Both validations, and nothing else: the files loaded, the summary was published.
    assert failed == sorted(name for name in states if name.startswith("validate snapshot"))
    assert len(failed) == 2 and len(states) > 2
    # The night's report is a keyed artifact of the failing run itself (its history page lists
    # both nights).
    (report,) = deployed.post(
        "/artifacts/filter",
        {
            "artifacts": {
                "flow_run_id": {"any_": [failed_night["id"]]},
                "key": {"any_": ["nightly-report"]},
            }
        },
    )
    assert ": FAILED" in report["data"]
