"""MkDocs hooks: the reference pages generated from the code, and the benchmark results.

- `<!-- encore-cli -->` becomes every `encore` command with its options, read from the typer
  app (flows/cli.py), so the CLI reference is never written twice;
- `<!-- nightly-parameters -->` becomes every field of `NightlyParams` (flows/params.py), with
  its default and description;
- bench/results/*.md and their plots are added to the site under `results/`, so the quality
  page links the generated tables themselves.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def on_files(files, config):
    from mkdocs.structure.files import File

    for path in sorted(RESULTS.glob("*")):
        if path.suffix in (".md", ".png"):
            files.append(
                File(
                    f"results/{path.name}",
                    str(RESULTS.parent),
                    config["site_dir"],
                    config["use_directory_urls"],
                )
            )
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- encore-cli -->" in markdown:
        markdown = markdown.replace("<!-- encore-cli -->", cli_reference())
    if "<!-- nightly-parameters -->" in markdown:
        markdown = markdown.replace("<!-- nightly-parameters -->", nightly_parameters())
    return markdown


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def cli_reference() -> str:
    """Each command of the typer app: its help and a table of its arguments and options."""
    import typer.main

    from flows.cli import app

    group = typer.main.get_command(app)
    out = []
    for name, command in group.commands.items():
        out += [f"## `encore {name}`", "", (command.help or "").strip(), ""]
        rows = [
            f"| `{', '.join(param.opts)}` | {_cell(getattr(param, 'help', '') or '')} |"
            f" {_cell('' if param.default is None else param.default)} |"
            for param in command.params
        ]
        if rows:
            out += ["| argument or option | what it does | default |", "|---|---|---|", *rows, ""]
    return "\n".join(out)


def nightly_parameters() -> str:
    """NightlyParams, flattened to dotted names (gate.min_gain), one row each."""
    from pydantic import BaseModel

    from flows.params import NightlyParams

    rows = ["| parameter | default | what it does |", "|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}.")
                continue
            default = field.default if field.default is not None else ""
            rows.append(
                f"| `{prefix}{name}` | {_cell(default)} | {_cell(field.description or '')} |"
            )

    walk(NightlyParams, "")
    return "\n".join(rows)
