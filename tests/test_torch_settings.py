"""Torch's process-wide settings are in place before torch loads, whichever package a process
enters Encore through (the CLI, a deployment's flow, a Dask worker's task, a benchmark)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import os, sys; import {package}; "
    "print('torch' in sys.modules, os.environ.get('THP_MEM_ALLOC_ENABLE'))"
)


def _probe(package: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(package=package)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.mark.parametrize("package", ["flows", "tasks", "models_src"])
def test_huge_pages_are_asked_for_before_torch_loads(package):
    assert _probe(package) == "False 1"


def test_huge_pages_can_be_turned_off():
    assert _probe("flows", THP_MEM_ALLOC_ENABLE="0") == "False 0"


def test_the_setting_reaches_torch_through_the_cli_module():
    """flows.cli (the `encore` command) imports torch lazily or not: either way the variable is
    set by then, since Python runs flows/__init__.py first."""
    assert _probe("flows.cli").endswith(" 1")
