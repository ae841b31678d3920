"""The docs are a contract: every command is in the README and has help; every linked page exists."""

import re
from pathlib import Path

import click
import pytest
import typer

from edgehost.cli import app, load_commands, main

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _commands() -> list[str]:
    load_commands()
    root = typer.main.get_command(app)
    names = []
    for name, cmd in root.commands.items():
        if isinstance(cmd, click.Group):
            names += [f"{name} {sub}" for sub in cmd.commands]
        else:
            names.append(name)
    return sorted(names)


@pytest.mark.parametrize("command", _commands())
def test_every_command_is_in_the_readme_and_has_help(command, capsys):
    top, _, sub = command.partition(" ")
    assert f"`edgehost {top}" in README, f"README's command table lacks edgehost {top}"
    if sub:
        assert re.search(rf"`edgehost {top}[^`]*\b{sub}\b", README), f"README lacks edgehost {command}"
    assert main([*command.split(), "--help"]) == 0
    assert "Usage:" in capsys.readouterr().out


def test_every_linked_doc_exists():
    for link in re.findall(r"\]\((docs/[^)]+)\)", README):
        assert (REPO / link).is_file(), link


def test_the_readme_quick_start_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    test_cmd = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest"
    assert test_cmd in README and test_cmd in ci


def test_every_setting_is_documented_as_the_model_declares_it():
    from edgehost.settings import reference_markdown

    assert reference_markdown() in (REPO / "docs" / "configuration.md").read_text(), \
        "docs/configuration.md is out of date: regenerate its table with settings.reference_markdown()"


def test_every_third_party_import_is_a_declared_dependency():
    """What src/ imports at the top of a module is declared in pyproject.toml (with a lower bound)."""
    import ast
    import sys
    import tomllib

    declared = {re.split(r"[<>=\[ ]", d)[0].lower().replace("-", "_")
                for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    aliases = {"yaml": "pyyaml", "jwt": "pyjwt", "dotenv": "python_dotenv"}
    missing = set()
    for path in (REPO / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("edgehost", "__future__"):
                    continue
                if aliases.get(top, top).lower() not in declared:
                    missing.add(top)
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
