"""The `edgehost` command: arguments in, reports out. One module per area, one small function per verb."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

try:  # typer >= 0.29 ships its own click: its usage errors are not click's
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on the real click
    from click import exceptions as click_errors

from edgehost import __version__
from edgehost.errors import EdgehostError, ExitStatus
from edgehost.cli.output import console

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


# Each module registers its verbs on `app` when imported.
from edgehost.cli import (  # noqa: E402,F401
    config_cmd, doctor_cmd, drill_cmd, launchd_cmd, migrate_cmd, points_cmd, portal_cmd, property_cmd, restore_cmd,
    status_cmd, systemd_cmd, tunnel_cmd, up_cmd, verify_cmd,
)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn errors into one line on stderr and a named exit code."""
    try:
        rv = app(args=argv, prog_name="edgehost", standalone_mode=False)
    except EdgehostError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return int(exc.status)
    except click_errors.NoArgsIsHelpError:
        console.print("error: a command is needed; `edgehost --help` lists them", highlight=False, soft_wrap=True)
        return int(ExitStatus.BAD_INPUT)
    except click_errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "edgehost"
        message = " ".join(exc.format_message().split())
        console.print(f"error: {message} (see `{where} --help`)", markup=False, highlight=False, soft_wrap=True)
        return int(ExitStatus.BAD_INPUT)
    except click_errors.ClickException as exc:
        console.print(f"error: {' '.join(exc.format_message().split())}", markup=False, highlight=False, soft_wrap=True)
        return int(ExitStatus.BAD_INPUT)
    except Abort:
        console.print("aborted")
        return 130
    except KeyboardInterrupt:
        return 130
    return rv if isinstance(rv, int) else 0


def run() -> None:
    sys.exit(main())
