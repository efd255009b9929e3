# Encore: `make run` and `make test` are all a fresh clone needs (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ENCORE := $(VENV)/bin/encore
STAMP  := $(VENV)/.installed
TORCH_PIN := torch==2.13.0

.PHONY: venv run test test-fast lint train train-improved bench-ingest bench-train bench-score clean-data

# The venv is rebuilt when pyproject.toml changes. torch goes first and pinned so that no other
# package can pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $(STAMP)

venv: $(STAMP)

## The nightly job on the built-in sample data (for now: generate, ingest, validate, report).
run: venv
	$(ENCORE) generate-sample
	$(ENCORE) ingest
	$(ENCORE) status

test: venv
	$(VENV)/bin/ruff check flows tasks models_src tests bench
	$(PY) -m pytest

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

## Ingest throughput vs a bare DuckDB read_csv, on a generated 10M-row listens file.
bench-ingest: venv
	$(PY) -m bench.bench_ingest --rows 10000000

clean-data:
	rm -rf data/warehouse.duckdb data/warehouse.duckdb.wal data/landing data/reports data/sources.toml
