"""The README's and the docs site's commands are the commands that exist: every `encore` and
`make` invocation they show names a real subcommand or target, and every option it passes is one
that subcommand takes; the README stays a front page (150 lines at most); its layout table
matches the tree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main

from flows.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The pages people read: the README and the docs site's markdown (not the generated reference).
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
TEXT = "\n".join(page.read_text() for page in PAGES)
# `encore ...` as a user types it: in a shell block (.venv/bin/encore ...) or in backticks.
ENCORE_CALL = re.compile(r"(?:\.venv/bin/)?\bencore ((?:[a-z-]+)(?: [^`\n|#]*)?)")


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def encore_calls(text: str) -> list[list[str]]:
    """Each `encore` invocation in the README's shell blocks and inline code, as argv."""
    calls = []
    snippets = shell_blocks(text) + re.findall(r"`([^`\n]*\bencore [^`\n]*)`", text)
    for snippet in snippets:
        for line in snippet.splitlines():
            for match in ENCORE_CALL.finditer(line.split("#", 1)[0]):
                words = re.sub(r"[\[\]|\\'\"]", " ", match.group(1))  # [optional] a\|b 'quoted'
                calls.append(words.split())
    return calls


def options_of(command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        names |= set(param.opts) | set(getattr(param, "secondary_opts", []))
    return names


def test_the_readme_and_the_docs_show_encore_commands_at_all():
    assert len(encore_calls(README)) >= 5
    assert len(encore_calls(TEXT)) >= 20


def test_the_readme_is_a_front_page_of_150_lines_at_most():
    assert len(README.splitlines()) <= 150


@pytest.mark.parametrize("argv", encore_calls(TEXT), ids=lambda argv: " ".join(argv)[:60])
def test_every_encore_command_in_the_readme_exists_with_its_options(argv):
    group = typer.main.get_command(app)
    while argv and argv[0].startswith("--"):  # the group's own options (--home DIR)
        assert argv[0] in options_of(group), f"`encore {argv[0]}` is not an option of encore"
        argv = argv[2:]
    if not argv:
        return
    subcommand = group.commands.get(argv[0])
    assert subcommand is not None, (
        f"README or docs show `encore {argv[0]}`; commands: {list(group.commands)}"
    )
    options = {word.split("=", 1)[0] for word in argv[1:] if word.startswith("--")}
    unknown = options - options_of(subcommand)
    assert not unknown, f"`encore {' '.join(argv)}`: {sorted(unknown)} not options of {argv[0]}"


def test_every_make_target_in_the_readme_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"(?m)^([a-z][a-z-]*):", makefile))
    shown = {
        word
        for block in shell_blocks(TEXT)
        for match in re.finditer(r"(?m)^\s*make ([a-z-]+)", block)
        for word in [match.group(1)]
    }
    shown |= set(re.findall(r"`make ([a-z][a-z-]*)", TEXT))
    assert shown and shown <= targets, sorted(shown - targets)


# --- the layout table -----------------------------------------------------------------------


def layout_rows() -> dict[str, str]:
    """The README's layout table: the path of each row -> the text of its "holds" cell."""
    section = README.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (.+) \|$", section, flags=re.M)
    return dict(rows)


def named_files(folder: str, holds: str) -> set[str]:
    """The `*.py` names a row's text gives, as paths (a name with a slash is from the root)."""
    names = re.findall(r"`([\w/]+\.py)`", holds)
    return {name if "/" in name else f"{folder}{name}" for name in names}


def python_modules(folder: Path) -> set[str]:
    return {
        str(path.relative_to(ROOT)) for path in folder.glob("*.py") if path.name != "__init__.py"
    }


def test_the_layout_table_lists_every_package_and_stage_module_and_nothing_else():
    rows = layout_rows()
    assert rows, "README has no layout table"
    # Every top-level package, and every package of tasks/ (the stages and the warehouse).
    packages = {
        f"{path.parent.relative_to(ROOT)}/"
        for pattern in ("*/__init__.py", "tasks/*/__init__.py")
        for path in ROOT.glob(pattern)
    }
    assert packages - rows.keys() == set(), "packages missing from the README's layout table"
    for folder, holds in rows.items():
        assert (ROOT / folder).exists(), f"the layout table lists {folder}, which does not exist"
        named = named_files(folder, holds)
        missing = {name for name in named if not (ROOT / name).exists()}
        assert not missing, f"the {folder} row names files that do not exist: {sorted(missing)}"
        if folder.startswith(("tasks/", "flows/")):
            unlisted = python_modules(ROOT / folder) - named
            assert not unlisted, f"modules of {folder} missing from its row: {sorted(unlisted)}"
