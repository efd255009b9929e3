"""The layout stays one a newcomer can read (issue 38): no module of the three layers is past 500
lines; one that grows past it is split by concern, not cut in the middle."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500


def test_no_module_of_the_three_layers_is_past_500_lines():
    long = {
        str(path.relative_to(ROOT)): lines
        for layer in ("flows", "tasks", "models_src")
        for path in sorted((ROOT / layer).rglob("*.py"))
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these by concern: {long}"
