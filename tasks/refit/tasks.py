"""Prefect tasks of the serving refit: the gate's winner retrained on all of the snapshot, then
checked and registered as the version that serves."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger

from models_src.gate import GateThresholds
from tasks.refit.refit import publish_serving_refit
from tasks.retries import IO_RETRIES
from tasks.warehouse.schema import warehouse


@task(
    name="publish serving refit",
    task_run_name="check and register the serving refit of v{version}",
    **IO_RETRIES,
)
def publish_serving_task(
    warehouse_path: str, version: int, refit: dict, export_path: str, thresholds: dict
) -> dict:
    """Check the refit (finite, ONNX parity, no collapse) and register it as `version`'s serving
    model; a refused refit leaves the evaluated champion serving, with a warning."""
    with warehouse(Path(warehouse_path)) as con:
        result = publish_serving_refit(
            con,
            version,
            refit,
            Path(export_path),
            Path(warehouse_path).parent / "models",
            GateThresholds(**thresholds),
        )
    if "refused" in result:
        get_run_logger().warning(
            f"serving refit of v{version} refused ({result['refused']}); v{version} itself serves"
        )
    return result


@task(name="serving refit", task_run_name="refit {family} v{version} on all of {dataset}")
def refit_serving_task(
    family: str,
    version: int,
    dataset: str,
    export_path: str,
    gated_run: str | None,
    baseline_file: str | None,
    warm_checkpoint: str | None,
    out_dir: str,
) -> dict:
    """The new champion's configuration on every interaction of the snapshot (for serving):
    {"run_dir"} for a trained model, {"baseline_file"} for a baseline."""
    from models_src.runs import refit_baseline_run, refit_run

    logger = get_run_logger()
    if baseline_file is not None:
        out = Path(out_dir) / f"{family}-serving.baseline.pt"
        out.parent.mkdir(parents=True, exist_ok=True)
        return {"baseline_file": refit_baseline_run(baseline_file, export_path, out)}
    result = refit_run(
        Path(gated_run), export_path, Path(out_dir), warm_checkpoint, log=logger.info
    )
    return {"run_dir": result["run_dir"], "epochs": result["epochs"]}


@task(name="kept champion's refit inputs", task_run_name="find what v{version} refits from")
def kept_champion_inputs_task(warehouse_path: str, version: int, out_dir: str) -> dict | None:
    """What refitting a kept champion on tonight's snapshot needs: its family, its run (a
    trained model: the published best checkpoint, with the epoch schedule the refit replays) or
    its baseline file (rebuilt from the registry: the fitted settings are in its config), and
    its current serving refit to warm-start from. None when it serves for a snapshot as new as
    tonight's (nothing to refresh) or its files are gone."""
    import json

    from models_src.baselines import FittedBaseline
    from models_src.runs import save_baseline
    from tasks.registry.publish import load_version_tables
    from tasks.registry.registry import serving_version, verify_artifacts, version_row

    with warehouse(Path(warehouse_path)) as con:
        row = version_row(con, version)
        serving = serving_version(con, row)
        latest = con.execute(
            "SELECT max(snapshot_id) FROM snapshots WHERE dataset = ? AND status = 'passed'",
            [row["dataset"]],
        ).fetchone()[0]
    if serving["snapshot_id"] is None or latest is None or serving["snapshot_id"] >= latest:
        return None
    if row["pruned_at"] is not None:
        return None
    verify_artifacts(row)
    config = json.loads(row["config_json"])
    inputs = {"family": row["kind"], "gated_run": None, "baseline_file": None}
    if "baseline" in config:
        buffers = load_version_tables(Path(row["artifact_dir"]))["buffers"]
        path = Path(out_dir) / f"{row['kind']}-v{version}.baseline.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_baseline(FittedBaseline(row["kind"], buffers, config["baseline"]), path)
        return {**inputs, "baseline_file": str(path), "warm_checkpoint": None}
    verify_artifacts(serving)
    warm = Path(serving["artifact_dir"]) / "best_model.pt"
    return {
        **inputs,
        "gated_run": row["artifact_dir"],
        "warm_checkpoint": str(warm) if warm.exists() else None,
    }
