"""The benchmarks' shared harness: results written as JSON and markdown, one child process per
measured run, a failed child a row that says so (or an error)."""

from __future__ import annotations

import json

import pytest

from bench import harness


def test_results_are_written_as_json_and_markdown(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")
    figures, table = harness.save_results("x", {"value": 0.5}, "| a |\n\n")
    assert json.loads(figures.read_text()) == {"value": 0.5}
    assert table.read_text() == "| a |\n"  # one trailing newline


def test_a_child_returns_its_last_json_line_or_its_error(tmp_path):
    (tmp_path / "child_ok.py").write_text('print("noise")\nprint(\'{"rows": 3}\')\n')
    (tmp_path / "child_fails.py").write_text('raise SystemExit("broken input")\n')
    env = {"PYTHONPATH": str(tmp_path)}
    assert harness.run_child("child_ok", [], env=env) == {"rows": 3}
    failed = harness.run_child("child_fails", [], {"dataset": "d"}, env=env)
    assert failed["dataset"] == "d" and "broken input" in failed["error"]
    with pytest.raises(RuntimeError, match="broken input"):
        harness.run_child("child_fails", [], env=env)
