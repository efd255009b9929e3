"""The nightly run's wall time by stage, and Prefect's share of it.

    python -m bench.bench_nightly     (make bench-nightly: the sample x5, ml-100k + Last.fm x1)
    python -m bench.bench_nightly --workloads sample --repeats 3   (one workload remeasured)

Workloads: the built-in sample (30 days of listens and ratings, 60 files) and, when ../shared is
present, MovieLens 100K (explicit -> rating model) + HetRec Last.fm (implicit -> GAT-BPR).

Each workload runs twice from an empty data home, each in a fresh process (as a worker starts
one per flow run): `prefect` calls the `nightly-retrain` flow against a real `prefect server`
this script starts on a loopback port; `direct` calls the same warehouse and models_src functions
in the same order with no Prefect at all (no flow, tasks, artifacts, state reports or logs to the
API). Same parameters (the defaults: up to 50 epochs with early stopping, seeded), so both train
the same epochs; the difference of the two wall times is the orchestration overhead.

Writes bench/results/nightly.json and nightly.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from bench.harness import RESULTS

# Pairs of runs per workload: the sample night's Prefect share swings by more than its target
# between pairs on this machine (nightly.md lists each pair), so it takes the median of five;
# the ml-100k + Last.fm night's share is a few seconds in ten minutes, and one pair of it
# already takes twenty.
DEFAULT_REPEATS = {"sample": 5, "ml-100k+lastfm": 1}
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STAGES = (
    "ingest + validate",
    "export",
    "train",
    "baselines",
    "publish (ONNX export)",
    "gate",
    "serving refit",
    "batch scoring",
)

MODES = ("direct", "prefect")
# Prefect's share of the night a user would accept: the sample night is short, so the fixed
# costs (a flow run, its tasks' states) weigh more there.
OVERHEAD_TARGETS = {"sample": 0.10, "ml-100k+lastfm": 0.05}


def sources_for(workload: str) -> str | None:
    if workload == "sample":
        from flows.cli import SAMPLE_SOURCES

        return SAMPLE_SOURCES
    movielens = SHARED_DATA / "ml-100k" / "u.data"
    lastfm = SHARED_DATA / "hetrec2011-lastfm-2k" / "user_artists.dat"
    if not (movielens.exists() and lastfm.exists()):
        return None
    return (
        f'[datasets.ml-100k]\nformat = "movielens-100k"\nlanding = "{movielens}"\n\n'
        f'[datasets.lastfm]\nformat = "lastfm-user-artists"\nlanding = "{lastfm}"\n'
    )


def prepare_home(root: Path, workload: str) -> None:
    from models_src.sample_data import default_configs, write_sample_days

    root.mkdir(parents=True)
    (root / "sources.toml").write_text(sources_for(workload))
    if workload == "sample":
        for kind, config in default_configs().items():
            write_sample_days(root / "landing" / f"sample-{kind}", kind, config, range(30))


# --- the two ways of running one night (in the child process) ------------------------------


def ingest_and_validate(con, specs, params, reports: Path) -> None:
    """Every dataset's landing files into the warehouse, then its snapshot validated (the
    warehouse calls the `ingest` flow makes, without Prefect)."""
    from tasks.ingest.load import ingest_file
    from tasks.ingest.snapshots import open_snapshot, register_dataset
    from tasks.validate.validation import validate_snapshot

    for spec in specs:
        register_dataset(con, spec)
        snapshot = open_snapshot(con, spec.name)
        for path in spec.landing_files():
            ingest_file(con, spec, path, snapshot)
        validate_snapshot(con, snapshot, params.validation, reports)


def direct_night(home, params) -> tuple[dict[str, float], list[dict]]:
    """The nightly stages called directly: no Prefect anywhere."""
    from models_src.gate import GateThresholds
    from models_src.runs import fit_baselines_run, train_run
    from tasks.gate.gating import gate_version, rank_run_ahead
    from tasks.ingest.sources_file import load_datasets
    from tasks.registry.publish import publish_run
    from tasks.report.report import stage_clock
    from tasks.score.scoring import score_dataset
    from tasks.train.due import DEFAULT_MODELS
    from tasks.train.export import export_interactions
    from tasks.warehouse.schema import warehouse

    timings: dict[str, float] = {}
    models = []
    specs = load_datasets(home.sources_file)
    thresholds = GateThresholds(**params.gate_thresholds())
    with warehouse(home.warehouse, temp_dir=home.tmp) as con:
        with stage_clock(timings, "ingest + validate"):
            ingest_and_validate(con, specs, params, home.reports)
        for spec in specs:
            for model in DEFAULT_MODELS[spec.format.kind]:
                with stage_clock(timings, "export"):
                    export = export_interactions(
                        con, spec.name, home.root / "exports" / f"{spec.name}.parquet"
                    )
                config = params.train_config(model)
                run_dir = home.root / "runs" / f"{spec.name}-{model}"
                with stage_clock(timings, "train"):
                    # train_run, as the train task: the item-item blend is part of training.
                    trainer, final = train_run(config, export["path"], run_dir, log=lambda _: None)
                    del trainer
                    rank_run_ahead(run_dir, Path(export["path"]), config["k"])
                with stage_clock(timings, "baselines"):
                    families = [] if model == "rating" else list(params.gate.baselines)
                    files = fit_baselines_run(
                        {**config, "model": model},
                        export["path"],
                        run_dir.with_name(run_dir.name + "-baselines"),
                        families,
                    )
                with stage_clock(timings, "publish (ONNX export)"):
                    metrics = {split: final[split] for split in ("val", "test")}
                    version = publish_run(
                        con, run_dir, spec.name, metrics, home.root / "models", params.k
                    )
                with stage_clock(timings, "gate"):
                    verdict, _ = gate_version(
                        con, version, Path(export["path"]), home.root / "models", thresholds, files
                    )
                if verdict.promote:
                    with stage_clock(timings, "serving refit"):
                        _serving_refit(con, home, verdict, version, files, export, run_dir,
                                       thresholds)  # fmt: skip
                if verdict.promote and model != "rating":
                    with stage_clock(timings, "batch scoring"):
                        score_dataset(con, spec.name, home.root / "exports")
                served = verdict.serve_role == "challenger"
                models.append(_model_row(spec.name, model, final, served))
    return timings, models


def _serving_refit(con, home, verdict, version, files, export, run_dir, thresholds) -> None:
    """What the flow does after a promotion: refit the new champion on all of the snapshot,
    check it and register it."""
    from models_src.runs import refit_baseline_run, refit_run
    from tasks.refit.refit import publish_serving_refit
    from tasks.registry.registry import champion, version_row

    row = champion(con, version_row(con, version)["slot"], export["dataset"])
    out = run_dir.with_name(run_dir.name + "-serving")
    if verdict.serve_role == "baseline":
        out.mkdir(parents=True, exist_ok=True)
        refit = {"baseline_file": refit_baseline_run(
            files[row["kind"]], export["path"], out / "serving.baseline.pt")}  # fmt: skip
    else:
        refit = {"run_dir": refit_run(run_dir, export["path"], out, log=lambda _: None)["run_dir"]}
    publish_serving_refit(
        con, row["version"], refit, Path(export["path"]), home.root / "models", thresholds
    )


def _model_row(dataset: str, model: str, final: dict, promoted: bool) -> dict:
    return {
        "dataset": dataset,
        "model": model,
        "epochs_run": final["epochs_run"],
        "test_recall@10": final["test"]["recall@10"],
        "promoted": promoted,
    }


def prefect_night(home, params) -> tuple[dict[str, float], list[dict]]:
    from flows.nightly import nightly_retrain

    night = nightly_retrain(params)
    models = [
        _model_row(o["dataset"], o["model"], o["training"], o["status"] == "promoted")
        for o in night["outcomes"]
        if o.get("training")
    ]
    return night["timings"], models


def child(mode: str, root: Path, out: Path) -> None:
    """One night in this process; writes its timings as JSON."""
    started = time.perf_counter()
    from flows.params import NightlyParams
    from tasks.home import EncoreHome, configure_environment

    home = configure_environment(EncoreHome(root))
    params = NightlyParams()
    imported = time.perf_counter()
    run = direct_night if mode == "direct" else prefect_night
    timings, models = run(home, params)
    finished = time.perf_counter()
    out.write_text(
        json.dumps(
            {
                "mode": mode,
                "import_seconds": imported - started,
                "run_seconds": finished - imported,
                "stages": timings,
                "models": models,
            }
        )
    )


# --- the parent: a Prefect server, fresh homes, one child per (workload, mode) -------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def prefect_server(scratch: Path):
    """A real `prefect server` on a loopback port for the `prefect` runs (stopped, always)."""
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(scratch / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    api = f"http://127.0.0.1:{port}/api"
    prefect = str(Path(sys.executable).with_name("prefect"))
    with (scratch / "server.log").open("w") as log:
        server = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(180):
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        wait_until_idle(server.pid)
        yield {**env, "PREFECT_API_URL": api}
    finally:
        server.terminate()
        server.wait(30)


def wait_until_idle(pid: int, busy_share: float = 0.1, timeout_s: float = 120.0) -> None:
    """Return once the server and its children use under `busy_share` of one core over two
    seconds. The server keeps migrating its database and starting its services for seconds after
    /health answers; the first direct night used to run beside that (and look slower)."""
    import psutil

    def cpu_seconds() -> float:
        try:
            server = psutil.Process(pid)
            processes = [server, *server.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    deadline = time.monotonic() + timeout_s
    before = cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(2.0)
        after = cpu_seconds()
        if after - before < 2.0 * busy_share:
            return
        before = after


def run_child(mode: str, workload: str, scratch: Path, env: dict) -> dict:
    root = scratch / f"{workload}-{mode}-{time.monotonic_ns()}"
    prepare_home(root, workload)
    out = root / "timings.json"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "bench.bench_nightly", "--child", mode, str(root), str(out)],
        env={**env, "ENCORE_HOME": str(root)},
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    result = json.loads(out.read_text())
    result["process_seconds"] = time.perf_counter() - started
    return result


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def summarize(workload: str, runs: list[dict], repeats: int) -> dict:
    by_mode = {mode: [r for r in runs if r["mode"] == mode] for mode in MODES}
    stages = {
        stage: {
            mode: _median([r["stages"].get(stage, 0.0) for r in rs]) for mode, rs in by_mode.items()
        }
        for stage in STAGES
    }
    total = {mode: _median([r["run_seconds"] for r in rs]) for mode, rs in by_mode.items()}
    overhead = total["prefect"] - total["direct"]
    return {
        "workload": workload,
        "repeats": repeats,
        "stages": stages,
        "run_seconds": total,
        "overhead_seconds": overhead,
        "overhead_share": overhead / total["prefect"],
        "runs": runs,
    }


def markdown(results: list[dict]) -> str:
    lines = [
        "# Nightly run: wall time by stage, Prefect vs the same calls without Prefect",
        "",
        "Each run in a fresh process from an empty data home, the two modes alternating;"
        " `prefect` runs the flow against a real local Prefect server. Machine: "
        f"{os.cpu_count()} cores, CPU only.",
        "",
        "Measuring starts once the server idles after its start. The flow runs its tasks in"
        " its own thread, one model after another, as they are called directly; the whole"
        " night is what compares.",
        "",
    ]
    for r in results:
        lines += [
            f"## {r['workload']}",
            "",
            f"Median of {r.get('repeats', 'the')} run(s) per mode{_measured(r)}.",
            "",
            "| stage | direct (s) | Prefect flow (s) |",
            "|---|---:|---:|",
        ]
        for stage, values in r["stages"].items():
            lines.append(f"| {stage} | {values['direct']:.1f} | {values['prefect']:.1f} |")
        total = r["run_seconds"]
        lines += [
            f"| **whole night** | **{total['direct']:.1f}** | **{total['prefect']:.1f}** |",
            "",
            f"Orchestration overhead: {r['overhead_seconds']:.1f} s ="
            f" **{r['overhead_share']:.1%}** of the Prefect run{_target(r['workload'])}.",
            "",
            _pairs(r["runs"]),
            "",
            "| mode | dataset | model | epochs | test recall@10 | promoted |",
            "|---|---|---|---:|---:|---|",
        ]
        for run in r["runs"]:
            for m in run["models"]:
                lines.append(
                    f"| {run['mode']} | {m['dataset']} | {m['model']} | {m['epochs_run']} |"
                    f" {m['test_recall@10']:.4f} | {m['promoted']} |"
                )
        lines.append("")
    return "\n".join(lines)


def _pairs(runs: list[dict]) -> str:
    """Each run's whole night in the order run: the spread behind the medians (the machine's
    speed drifts by more than Prefect's share within one sitting)."""
    seconds = {mode: [r["run_seconds"] for r in runs if r["mode"] == mode] for mode in MODES}
    pairs = ", ".join(
        f"{direct:.1f} / {flow:.1f}"
        for direct, flow in zip(seconds["direct"], seconds["prefect"], strict=False)
    )
    return f"Whole night of each run in turn, direct / Prefect (s): {pairs}."


def _target(workload: str) -> str:
    share = OVERHEAD_TARGETS.get(workload)
    return f" (target <= {share:.0%})" if share is not None else ""


def _measured(result: dict) -> str:
    return f", measured {result['measured']}" if result.get("measured") else ""


def merged(previous: list[dict], fresh: list[dict]) -> list[dict]:
    """The committed results with the workloads measured now replaced (the others kept as they
    were, each section saying when it was measured): a long workload need not be rerun to
    remeasure a short one."""
    by_name = {r["workload"]: r for r in previous} | {r["workload"]: r for r in fresh}
    order = [w for w in ("sample", "ml-100k+lastfm") if w in by_name]
    return [by_name[w] for w in order + sorted(set(by_name) - set(order))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("MODE", "HOME", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--repeats",
        type=int,
        help="Runs per mode (median); default per workload: " + str(DEFAULT_REPEATS),
    )
    parser.add_argument("--workloads", nargs="+", default=["sample", "ml-100k+lastfm"])
    args = parser.parse_args()
    if args.child:
        mode, home, out = args.child
        child(mode, Path(home), Path(out))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="encore-bench-nightly-") as tmp:
        scratch = Path(tmp)
        with prefect_server(scratch) as env:
            for workload in args.workloads:
                if sources_for(workload) is None:
                    print(f"{workload}: ../shared/data not present, skipped")
                    continue
                runs, repeats = [], args.repeats or DEFAULT_REPEATS.get(workload, 3)
                for _ in range(repeats):
                    for mode in MODES:
                        runs.append(run_child(mode, workload, scratch, env))
                        print(f"{workload} {mode}: {runs[-1]['run_seconds']:.1f} s", flush=True)
                results.append(summarize(workload, runs, repeats))
                results[-1]["measured"] = time.strftime("%Y-%m-%d")
    RESULTS.mkdir(exist_ok=True)
    saved = RESULTS / "nightly.json"
    results = merged(json.loads(saved.read_text()) if saved.exists() else [], results)
    saved.write_text(json.dumps(results, indent=2))
    (RESULTS / "nightly.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
