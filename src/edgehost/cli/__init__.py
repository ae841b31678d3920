"""The `edgehost` command: arguments in, reports out. One module per area, one small function per verb."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from typer._click import exceptions as click_errors  # typer >= 0.29 ships its own click, not click's errors

from edgehost import __version__
from edgehost.errors import EdgehostError, ExitStatus
from edgehost.cli.output import console, emit_json

Abort = typer.Abort  # the Abort of whichever click typer runs on

app = typer.Typer(
    name="edgehost",
    help="Run a small portal on a Mac mini with SQLite, Litestream and Cloudflare, without fearing for its data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgehost {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    home: Optional[Path] = typer.Option(
        None, "--home", envvar="EDGEHOST_HOME", help="The kit's home: edgehost.toml, litestream.yml, data/ and state/ live here (default: the current directory)."
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    if home is not None:
        os.environ["EDGEHOST_HOME"] = str(home.resolve())


# Each module registers its verbs on `app` when imported; `main` imports only the one a command line
# names (the others pull in what they need: pydantic models, boto3, Starlette...), all of them for
# `--help` or an unknown verb.
COMMANDS = {
    "alert": "alert_cmd", "config": "config_cmd", "cost": "cost_cmd", "doctor": "doctor_cmd", "drill": "drill_cmd",
    "follow": "follow_cmd", "launchd": "launchd_cmd", "migrate": "migrate_cmd", "mirror": "mirror_cmd",
    "points": "points_cmd", "portal": "portal_cmd", "promote": "follow_cmd",
    "property": "property_cmd", "restore": "restore_cmd", "status": "status_cmd", "systemd": "systemd_cmd",
    "tunnel": "tunnel_cmd", "up": "up_cmd", "verify": "verify_cmd",
}


def _verb(args: list[str]) -> str:
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--home":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return ""


def load_commands(args: list[str] | None = None) -> None:
    """Register the verb `args` names, or every verb (no args, --help, a verb not known here)."""
    verb = _verb(args or [])
    for module in [COMMANDS[verb]] if verb in COMMANDS else COMMANDS.values():
        importlib.import_module(f"edgehost.cli.{module}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn errors into one line on stderr and a named exit code.

    With --json the error is also a JSON object on stdout ({"ok": false, "error", "exit"}), so a
    program reading stdout always gets JSON.
    """
    args = sys.argv[1:] if argv is None else argv
    wants_json = "--json" in args
    load_commands(args)
    try:
        rv = app(args=args, prog_name="edgehost", standalone_mode=False)
    except EdgehostError as exc:
        return fail(int(exc.status), str(exc), wants_json, markup=True)
    except click_errors.NoArgsIsHelpError:
        return fail(int(ExitStatus.BAD_INPUT), "a command is needed; `edgehost --help` lists them", wants_json)
    except click_errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "edgehost"
        message = " ".join(exc.format_message().split())
        return fail(int(ExitStatus.BAD_INPUT), f"{message} (see `{where} --help`)", wants_json)
    except click_errors.ClickException as exc:
        return fail(int(ExitStatus.BAD_INPUT), " ".join(exc.format_message().split()), wants_json)
    except Abort:
        console.print("aborted")
        return 130
    except KeyboardInterrupt:
        return 130
    return rv if isinstance(rv, int) else 0


def fail(code: int, message: str, wants_json: bool, markup: bool = False) -> int:
    if wants_json:
        emit_json({"ok": False, "error": message, "exit": code})
    prefix = "[bold red]error:[/] " if markup else "error: "
    console.print(prefix + escape(message), highlight=False, soft_wrap=True)
    return code


def run() -> None:
    sys.exit(main())
