"""Pure ML for Encore: sample data, graphs, splits, models, metrics, trainers.

This package never imports prefect, duckdb or great_expectations (see DESIGN.md's layer rule).
"""

import os

# Transparent huge pages for torch's large CPU tensors (c10's THP_MEM_ALLOC_ENABLE: tensors from
# 2 MB up are aligned and madvise(MADV_HUGEPAGE)d). glibc maps every allocation above 32 MB
# afresh and unmaps it when freed, so each training step faults its edge-sized tensors in again
# 4 kB at a time: on the sample's GAT-BPR, 30 % (LightGCN propagation) to 50 % (attention) of
# the training's CPU time was the kernel's (bench/results/allocator.md). torch reads the variable
# once, at its first allocation, so it is set here, before any of Encore's modules imports torch
# (`tasks` and `flows` import this package first), and inherited by the processes a night starts.
# Set it to 0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
