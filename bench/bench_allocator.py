"""GAT-BPR's training on the sample under three CPU memory settings: CPU time in the kernel.

    python -m bench.bench_allocator     (make bench-allocator)

Each setting trains the built-in sample's listens (seeded; 20 epochs, 2 with attention) in a
fresh process, on a worker thread as a Dask worker runs a night's training, with two
configurations: the nightly's defaults (LightGCN's propagation, models_src/params.py) and the
training CLIs' (learned attention, TrainConfig's own defaults), and reports wall, user and
system seconds, minor page faults and peak RSS (getrusage):

- `glibc default`: THP_MEM_ALLOC_ENABLE=0. glibc serves every allocation above 32 MB with a
  fresh mmap and unmaps it when freed, so each step's edge-sized tensors fault in again, 4 kB at
  a time.
- `THP (Encore's default)`: torch's allocator asks for transparent huge pages for tensors from
  2 MB up (models_src/__init__.py): one fault per 2 MB.
- `THP + no mmap`: also mallopt(M_MMAP_MAX=0) with a 1 GB trim threshold, so freed blocks are
  reused from the heap. Measured as the road not taken: faster still, at a higher peak RSS.

Writes bench/results/allocator.json and allocator.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import RESULTS, save_results

# Epochs per configuration: the nightly defaults train an epoch in about a second on the sample.
EPOCHS = {"nightly defaults": 20, "attention (CLI defaults)": 2}
SETTINGS = {
    "glibc default": {"THP_MEM_ALLOC_ENABLE": "0"},
    "THP (Encore's default)": {"THP_MEM_ALLOC_ENABLE": "1"},
    "THP + no mmap": {"THP_MEM_ALLOC_ENABLE": "1", "ENCORE_BENCH_NO_MMAP": "1"},
}
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


CONFIGS = tuple(EPOCHS)


def child(config_name: str) -> dict:
    """One training run of `config_name` in this process; its resource usage."""
    import resource
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    if os.environ.get("ENCORE_BENCH_NO_MMAP"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    from models_src.config import TrainConfig, tuned_defaults
    from models_src.runs import train_run

    base = tuned_defaults("gat-bpr") if config_name == CONFIGS[0] else TrainConfig().to_dict()
    config = {**base, "model": "gat-bpr", "epochs": EPOCHS[config_name], "patience": 1000}

    def train() -> dict:
        with tempfile.TemporaryDirectory() as out:
            return train_run(config, "sample-listens", Path(out), log=lambda _: None)[1]

    started = time.perf_counter()
    metrics = ThreadPoolExecutor(max_workers=1).submit(train).result()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_seconds": time.perf_counter() - started,
        "user_seconds": usage.ru_utime,
        "system_seconds": usage.ru_stime,
        "minor_faults": usage.ru_minflt,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "val_recall@10": metrics["val"]["recall@10"],
    }


def markdown(results: dict[str, dict[str, dict]]) -> str:
    lines = [
        "# GAT-BPR training on the sample: CPU memory settings",
        "",
        "The built-in sample's listens, on a worker thread, one fresh process per"
        f" run (`make bench-allocator`), measured {time.strftime('%Y-%m-%d')}. Machine: 2 cores,"
        " CPU only.",
    ]
    for config_name, rows in results.items():
        lines += [
            "",
            f"## {config_name}: {EPOCHS[config_name]} epochs",
            "",
            "| setting | wall s | user s | system s | minor faults | peak RSS MB | val recall@10 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in rows.items():
            lines.append(
                f"| {name} | {r['wall_seconds']:.1f} | {r['user_seconds']:.1f} |"
                f" {r['system_seconds']:.1f} | {r['minor_faults']:,} | {r['peak_rss_mb']:,.0f} |"
                f" {r['val_recall@10']:.4f} |"
            )
        base, thp = rows["glibc default"], rows["THP (Encore's default)"]
        lines += [
            "",
            f"THP: training **{base['wall_seconds'] / thp['wall_seconds']:.2f}x** as fast as"
            f" glibc's default, peak RSS {thp['peak_rss_mb'] / base['peak_rss_mb']:.2f}x.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(child(sys.argv[2])))
        return
    results: dict[str, dict[str, dict]] = {}
    for config_name in CONFIGS:
        rows = results.setdefault(config_name, {})
        for name, env in SETTINGS.items():
            done = subprocess.run(
                [sys.executable, "-m", "bench.bench_allocator", "--child", config_name],
                env={**os.environ, **env},
                check=True,
                capture_output=True,
                text=True,
            )
            rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(config_name, name, rows[name], flush=True)
    RESULTS.mkdir(exist_ok=True)
    save_results("allocator", results, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
