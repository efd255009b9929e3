"""One definition of the models' parameters (models_src/params.py): the trainer's config, the
nightly defaults, the Prefect run form, the CLI and the README must all agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prefect.utilities.callables import parameter_schema

from flows.nightly import nightly_retrain
from flows.params import NightlyParams
from models_src.config import TrainConfig, tuned_defaults
from models_src.params import MODEL_PARAMS, SECTIONS, GatBprParams, parameter_table

PARAMETERS_PAGE = "docs/reference/parameters.md"

ROOT = Path(__file__).resolve().parents[1]


def test_every_training_parameter_is_a_trainer_field_and_the_defaults_are_read_from_it():
    trainer_fields = set(TrainConfig.__dataclass_fields__)
    for kind, params in MODEL_PARAMS.items():
        training = params().training_fields()
        assert set(training) <= trainer_fields, set(training) - trainer_fields
        assert tuned_defaults(kind) == {"model": kind, **training}
        nightly = NightlyParams().train_config(kind)
        assert all(nightly[name] == value for name, value in tuned_defaults(kind).items())
    assert "processes" not in GatBprParams().training_fields()  # orchestration, not training


def test_unknown_names_are_refused_with_the_nearest_valid_one():
    with pytest.raises(ValueError, match=r"lrr \(did you mean lr\?\)"):
        TrainConfig.from_dict({"model": "gat-bpr", "lrr": 0.1})
    with pytest.raises(ValueError, match="Extra inputs"):
        GatBprParams.model_validate({"embeding_dim": 32})


def test_the_run_form_shows_each_parameter_with_its_default_and_description():
    schema = parameter_schema(nightly_retrain).model_dump()
    definitions = schema["definitions"]
    for params in MODEL_PARAMS.values():
        form = definitions[params.__name__]["properties"]
        assert set(form) == set(params.model_fields)
        for name, field in params.model_fields.items():
            assert form[name]["default"] == field.default, name
            assert form[name]["description"] == field.description, name


def test_the_docs_parameter_table_is_the_generated_one():
    page = (ROOT / PARAMETERS_PAGE).read_text()
    found = re.search(r"<!-- parameters:start -->\n(.*?)\n<!-- parameters:end -->", page, re.S)
    assert found, f"{PARAMETERS_PAGE} lacks the parameters table markers"
    regenerate = f"regenerate: python -m models_src.params --readme {PARAMETERS_PAGE}"
    assert found.group(1) == parameter_table(), regenerate
    for kind in MODEL_PARAMS:
        for name in MODEL_PARAMS[kind].model_fields:
            assert f"`{SECTIONS[kind]}.{name}`" in found.group(1)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("gat_bpr.lrr=0.1", "did you mean lr?"),
        ("gate.min_gain=much", "gate.min_gain: Input should be a valid number"),
        ("nonsense", "expected NAME=VALUE"),
    ],
)
def test_nightly_set_refuses_a_wrong_parameter_in_one_line(
    tmp_path, monkeypatch, setting, expected
):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("ENCORE_HOME", str(tmp_path))
    done = CliRunner().invoke(app, ["nightly", "--set", setting])
    assert done.exit_code == 2
    assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_generated_section_replaces_only_what_lies_between_its_markers():
    from models_src.params import replace_marked_section

    text = "intro\n<!-- t:start -->\n<!-- t:end -->\n\n## After\nkept\n"
    once = replace_marked_section(text, "t", "| a |")
    assert once == "intro\n<!-- t:start -->\n| a |\n<!-- t:end -->\n\n## After\nkept\n"
    assert replace_marked_section(once, "t", "| b |").endswith("<!-- t:end -->\n\n## After\nkept\n")
    with pytest.raises(ValueError, match="markers"):
        replace_marked_section("no markers here", "t", "| a |")
