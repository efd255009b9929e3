# Encore: `make run` and `make test` are all a fresh clone needs (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ENCORE := $(VENV)/bin/encore
STAMP  := $(VENV)/.installed
TORCH_PIN := torch==2.13.0

.PHONY: venv run docs docs-serve server deploy deploy-docker deploy-kubernetes worker serve test test-fast lint train train-improved bench-ingest bench-train bench-score bench-nightly bench-warm-start bench-allocator bench-retention bench-scale bench-gate bench-served bench-replay bench-ablation bench-tune bench-blend bench-gpu gpu-wheels clean-data

# The venv is rebuilt when pyproject.toml changes. torch goes first and pinned so that no other
# package can pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $(STAMP)

venv: $(STAMP)

## The nightly run, end to end, on the built-in sample data (Prefect in ephemeral mode: no server).
run: venv
	$(ENCORE) generate-sample
	$(ENCORE) nightly
	$(ENCORE) status

# --- Running it nightly: a Prefect server, a process work pool and a worker (README "Run it
# nightly"). Everything stays under ENCORE_HOME; nothing is written to ~.
ENCORE_HOME      ?= $(CURDIR)/data
ENCORE_CRON      ?= 0 2 * * *
# The tuning job (tune/weekly): Saturdays after the night, so its trials never slow a night down.
ENCORE_TUNE_CRON ?= 0 8 * * 6
ENCORE_TIMEZONE  ?= UTC
PREFECT_PORT     ?= 4200
# Where failed or crashed runs and failed validations are reported (deployments/alerts.py): an
# http(s) endpoint (JSON POST) or an Apprise URL (slack://, msteams://, mailto://). Empty: no alert,
# and `make deploy` deletes the one an earlier deploy created.
ENCORE_ALERT_URL ?=
# Runs older than ENCORE_PREFECT_RETENTION_DAYS leave the server's database with their logs and
# artifacts (Prefect's own vacuum service; off by default, and events go after 7 days anyway).
ENCORE_PREFECT_RETENTION_DAYS ?= 90
PREFECT_ENV = ENCORE_HOME="$(ENCORE_HOME)" PREFECT_HOME="$(ENCORE_HOME)/prefect" \
	MPLCONFIGDIR="$(ENCORE_HOME)/cache/matplotlib" XDG_CACHE_HOME="$(ENCORE_HOME)/cache" \
	PREFECT_API_URL="http://127.0.0.1:$(PREFECT_PORT)/api" PREFECT_SERVER_ANALYTICS_ENABLED=false \
	PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED="events,flow_runs" \
	PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD="$$(( $(ENCORE_PREFECT_RETENTION_DAYS) * 86400 ))"

## The Prefect server and its UI on http://127.0.0.1:$(PREFECT_PORT) (foreground; Ctrl-C stops it).
server: venv
	env $(PREFECT_ENV) $(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

## The encore-process work pool, the deployments of deployments/prefect.yaml and the failure alert
## (server running).
deploy: venv
	env $(PREFECT_ENV) $(VENV)/bin/prefect work-pool create encore-process --type process --overwrite
	env $(PREFECT_ENV) ENCORE_PROJECT_ROOT="$(CURDIR)" ENCORE_CRON="$(ENCORE_CRON)" \
		ENCORE_TUNE_CRON="$(ENCORE_TUNE_CRON)" \
		ENCORE_TIMEZONE="$(ENCORE_TIMEZONE)" \
		$(VENV)/bin/prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml
	env $(PREFECT_ENV) ENCORE_ALERT_URL="$(ENCORE_ALERT_URL)" $(PY) deployments/alerts.py

# --- The same deployments on a Docker or Kubernetes work pool (deployments/README.md, "Moving to
# Docker or Kubernetes"): the project image (deployments/Dockerfile) is built here and pushed to
# ENCORE_IMAGE, a registry the workers pull from (needs a Docker daemon and `docker login`).
ENCORE_IMAGE       ?=
ENCORE_IMAGE_TAG   ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
ENCORE_DATA_VOLUME ?= encore-data
ENCORE_NAMESPACE   ?= encore
IMAGE_ENV = ENCORE_IMAGE="$(ENCORE_IMAGE)" ENCORE_IMAGE_TAG="$(ENCORE_IMAGE_TAG)" \
	ENCORE_CRON="$(ENCORE_CRON)" ENCORE_TUNE_CRON="$(ENCORE_TUNE_CRON)" \
	ENCORE_TIMEZONE="$(ENCORE_TIMEZONE)"
NEED_IMAGE = @test -n "$(ENCORE_IMAGE)" || { echo "set ENCORE_IMAGE=<registry>/<repo>/encore" >&2; exit 1; }

## The encore-docker work pool and deployments/prefect-docker.yaml (server running; ENCORE_IMAGE).
deploy-docker: venv
	$(NEED_IMAGE)
	env $(PREFECT_ENV) $(VENV)/bin/prefect work-pool create encore-docker --type docker --overwrite
	env $(PREFECT_ENV) $(IMAGE_ENV) ENCORE_DATA_VOLUME="$(ENCORE_DATA_VOLUME)" \
		$(VENV)/bin/prefect --no-prompt deploy --all --prefect-file deployments/prefect-docker.yaml

## The encore-kubernetes work pool (with the data home's PVC) and deployments/prefect-kubernetes.yaml.
deploy-kubernetes: venv
	$(NEED_IMAGE)
	env $(PREFECT_ENV) $(VENV)/bin/prefect work-pool create encore-kubernetes --type kubernetes \
		--base-job-template deployments/kubernetes-base-job-template.json --overwrite
	env $(PREFECT_ENV) $(IMAGE_ENV) ENCORE_NAMESPACE="$(ENCORE_NAMESPACE)" \
		$(VENV)/bin/prefect --no-prompt deploy --all --prefect-file deployments/prefect-kubernetes.yaml

## A worker that runs the pool's flow runs (foreground; stop it before the server).
worker: venv
	env $(PREFECT_ENV) $(VENV)/bin/prefect worker start --pool encore-process

## The single-process alternative to deploy + worker: flow.serve with the same schedule.
serve: venv
	env $(PREFECT_ENV) ENCORE_CRON="$(ENCORE_CRON)" ENCORE_TUNE_CRON="$(ENCORE_TUNE_CRON)" \
		ENCORE_TIMEZONE="$(ENCORE_TIMEZONE)" \
		$(PY) deployments/serve.py

# Two pytest-xdist workers, a test file each at a time (--dist loadfile keeps a file's tests,
# and its module fixtures, in one process): most of the suite waits on Prefect servers, workers
# and subprocesses, so two files in flight use two cores where one leaves one idle.
TEST_WORKERS ?= 2
test: venv
	$(VENV)/bin/ruff check flows tasks models_src tests bench
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir $(VENV)/docs-site
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

## The docs site into site/ (dead links, missing pages and broken anchors fail the build).
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

## The docs site served with live reload while you edit (http://127.0.0.1:8000).
docs-serve: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

test-fast: venv
	$(PY) -m pytest -m "not slow and not integration and not e2e"

lint: venv
	$(VENV)/bin/ruff check flows tasks models_src tests bench
	$(VENV)/bin/ruff format --check flows tasks models_src tests bench

## The seeds' trainers on the generated sample (GAT-BPR; add ARGS="--model rating --data sample-ratings").
## Batches of 8192 pairs: GAT-BPR propagates the whole graph once per step (see models_src/config.py).
train: venv
	$(PY) -m models_src.train --epochs 10 --batch-size 8192 $(ARGS)

train-improved: venv
	$(PY) -m models_src.train_improved --epochs 50 --patience 5 --batch-size 8192 --use-scheduler $(ARGS)

## Encore's models vs peers (PyG LightGCN, implicit ALS/BPR, Surprise SVD, ...) on ../shared/data.
bench-train: venv
	$(PY) -m bench.bench_train

## Top-10 batch scoring: onnxruntime vs torch eager vs numpy, as a share of the GEMM limit.
bench-score: venv
	$(PY) -m bench.bench_score

## The nightly run's wall time by stage, with and without Prefect (orchestration overhead).
bench-nightly: venv
	$(PY) -m bench.bench_nightly

## The gate over simulated nights on ../shared/data: no champion flip on noise, a clearly better
## challenger promoted on its first night.
bench-gate: venv
	$(PY) -m bench.bench_gate

## The served lists scored on held-out interactions (ml-100k, Last.fm, a sparse Last.fm), next to
## MostPopular and the night's own ALS baseline.
bench-served: venv
	$(PY) -m bench.bench_served

## What Encore serves, replayed night by night on time-ordered public data (ml-100k weekly,
## ml-latest-small monthly), judged on the next period beside peers refit on the same schedule.
bench-replay: venv
	$(PY) -m bench.bench_replay

## GAT-BPR's levers one at a time on bench-train's split, chosen on val (bench/results/ablation.md).
bench-ablation: venv
	$(PY) -m bench.bench_ablation

## GAT-BPR's defaults across dataset shapes: an Optuna study per dataset on val, then every
## dataset's best trained on every dataset (bench/results/tune.md).
bench-tune: venv
	$(PY) -m bench.bench_tune

## Levers measured before building them: GAT-BPR blended with GF-CF's filter and with EASE^R.
bench-blend: venv
	$(PY) -m bench.bench_blend

## Warm vs cold start over 5 simulated nights: quality and training time.
bench-warm-start: venv
	$(PY) -m bench.bench_warm_start

## GAT-BPR's training on the sample (nightly and CLI defaults) with glibc's default allocation, THP, and THP without mmap.
bench-allocator: venv
	$(PY) -m bench.bench_allocator

# The data home's size over 30 nights of the sample under the default retention policy.
bench-retention: venv
	$(PY) -m bench.bench_retention

# The whole nightly flow at 1M, 3M and 10M listens (+ a fifth as many ratings) on a 2-worker
# Dask LocalCluster: seconds and peak memory per stage, and how they grow with the data.
bench-scale: venv
	$(PY) -m bench.bench_scale

## On a machine with CUDA: the CUDA-marked tests, bench-train's GAT-BPR and LightGCN on the GPU and
## a 10M-listen night's training stage, fp32 vs bf16 autocast (bench/results/gpu.md). It uses
## .venv when there is one, else a python3 whose torch sees CUDA (see bench/gpu_check.sh).
bench-gpu:
	bash bench/gpu_check.sh

## Wheels of what a GPU image's python3 lacks for bench-gpu (pydantic and its needs), for a
## machine without PyPI: bring the checkout's .whl/ folder along (git ignores it).
GPU_WHEELS = pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
	typing-inspection==0.4.5 typing-extensions==4.16.0
gpu-wheels: venv
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_17_x86_64 -d .whl $(GPU_WHEELS)

## Ingest throughput vs a bare DuckDB read_csv, on a generated 10M-row listens file.
bench-ingest: venv
	$(PY) -m bench.bench_ingest --rows 10000000

## Forget everything the runs wrote into data/ (keeps Prefect's database and the caches).
clean-data:
	chmod -R u+w data/models 2>/dev/null || true
	rm -rf data/warehouse.duckdb data/warehouse.duckdb.wal data/landing data/reports \
		data/sources.toml data/models data/runs data/exports data/nightly.lock data/tuning \
		data/tuning.lock
