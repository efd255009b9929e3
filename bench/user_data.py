"""Public datasets fed to Encore as a user would: one delimited landing file per dataset, declared
in a fresh data home's sources.toml with the generic `delimited` format, then `encore nightly`.

Shared by bench_gate (the gate over simulated nights) and bench_served (the served lists scored
on interactions Encore never saw). The files in ../shared/data are read in place; only derived
tables are written, into temporary data homes, never into the repository.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.datasets import SHARED_DATA

SPARSE_PER_USER = 7


def _ml100k() -> tuple[pd.DataFrame, dict]:
    frame = pd.read_csv(
        SHARED_DATA / "ml-100k/u.data", sep="\t", names=["user", "item", "rating", "ts"]
    )
    return frame[["user", "item", "ts"]], {"ts": "ts"}


def _lastfm() -> tuple[pd.DataFrame, dict]:
    frame = pd.read_csv(SHARED_DATA / "hetrec2011-lastfm-2k/user_artists.dat", sep="\t")
    frame = frame.rename(columns={"userID": "user", "artistID": "item"})
    return frame[["user", "item", "weight"]], {"weight": "weight"}


def _lastfm_sparse() -> tuple[pd.DataFrame, dict]:
    """Last.fm cut to a handful of artists per user (7, drawn at random with a fixed seed): the
    sparse shape where a learned model has little to learn from."""
    frame, columns = _lastfm()
    rng = np.random.default_rng(7)
    order = rng.permutation(len(frame))
    shuffled = frame.iloc[order]
    kept = shuffled.groupby("user", sort=False).head(SPARSE_PER_USER)
    return kept.sort_values(["user", "item"]).reset_index(drop=True), columns


def _ml_latest_small_ratings() -> tuple[pd.DataFrame, dict]:
    """MovieLens latest-small as what it is, explicit ratings (0.5-5 in half stars): the lists
    are judged on the movies a user liked, and the rating model serves predicted stars."""
    frame = pd.read_csv(SHARED_DATA / "ml-latest-small/ratings.csv")
    frame = frame.rename(columns={"userId": "user", "movieId": "item", "timestamp": "ts"})
    return frame[["user", "item", "rating", "ts"]], {"rating": "rating", "ts": "ts"}


DATASETS = {
    "ml-100k": _ml100k,
    "lastfm": _lastfm,
    "lastfm-sparse": _lastfm_sparse,
    "ml-latest-small-ratings": _ml_latest_small_ratings,
}
FILES = {
    "ml-100k": "ml-100k/u.data",
    "lastfm": "hetrec2011-lastfm-2k/user_artists.dat",
    "lastfm-sparse": "hetrec2011-lastfm-2k/user_artists.dat",
    "ml-latest-small-ratings": "ml-latest-small/ratings.csv",
}
RATING_SCALES = {"ml-latest-small-ratings": (0.5, 5.0, 0.5)}


def available(name: str) -> bool:
    return (SHARED_DATA / FILES[name]).is_file()


def load(name: str) -> tuple[pd.DataFrame, dict]:
    """(frame with user, item and the mapped extra columns, the column mapping's extras)."""
    return DATASETS[name]()


def write_home(home: Path, name: str, frame: pd.DataFrame, extra_columns: dict) -> Path:
    """A fresh data home whose sources.toml names one delimited landing file of `frame`."""
    landing = home / "landing" / name
    landing.mkdir(parents=True, exist_ok=True)
    frame.astype({"user": str, "item": str}).to_csv(
        landing / "interactions.tsv", sep="\t", index=False
    )
    mapping = {"user_id": "user", "item_id": "item", **extra_columns}
    columns = ", ".join(f'{key} = "{value}"' for key, value in mapping.items())
    explicit = "rating" in extra_columns
    toml = [
        f"[datasets.{name}]",
        'format = "delimited"',
        f'kind = "{"explicit" if explicit else "implicit"}"',
        f'landing = "{landing}"',
        'delimiter = "\\t"',
        "header = true",
        f"columns = {{ {columns} }}",
    ]
    if "ts" in extra_columns:
        toml.append('timestamp_unit = "epoch_s"')
    if explicit:
        low, high, step = RATING_SCALES[name]
        toml.append(f"rating_scale = [{low}, {high}, {step}]")
    (home / "sources.toml").write_text("\n".join(toml) + "\n")
    return home


def run_nights(home: Path, nights: list[dict], out: Path) -> list[dict]:
    """Run `nights` (NightlyParams overrides, one dict per night) in a child process on `home`
    (its own Prefect home and temporary server); returns each night's outcomes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ENCORE_"))}
    env["ENCORE_HOME"] = str(home)
    spec = out.with_suffix(".spec.json")
    spec.write_text(json.dumps(nights))
    done = subprocess.run(
        [sys.executable, "-m", "bench.user_data", str(spec), str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    (home / "nights.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"nights on {home} failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def _outcome_summary(outcome: dict) -> dict:
    """What the benchmarks keep of a night's outcome (the gate's tables and checks included)."""
    keep = ("dataset", "model", "status", "reason", "gate", "serving", "scoring", "training")
    summary = {key: outcome.get(key) for key in keep if key in outcome}
    if summary.get("training"):
        summary["training"] = {
            k: summary["training"].get(k)
            for k in ("best_epoch", "epochs_run", "seconds", "started_from", "run_dir")
        }
    return summary


def _child(spec: Path, out: Path) -> None:
    from tasks.home import configure_environment

    configure_environment()
    from flows.nightly import nightly_retrain
    from flows.params import NightlyParams

    results = []
    for overrides in json.loads(spec.read_text()):
        night = nightly_retrain(NightlyParams.model_validate(overrides))
        results.append(
            {
                "outcomes": [_outcome_summary(o) for o in night["outcomes"]],
                "warnings": night.get("warnings", []),
                "seconds": night["seconds"],
            }
        )
    out.write_text(json.dumps(results, default=float))


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]))
