"""`edgehost doctor`."""

from __future__ import annotations

import typer
from rich.markup import escape

from edgehost.ops.doctor import FAIL, OK, WARN, doctor
from edgehost.errors import ExitStatus
from edgehost.cli import app
from edgehost.cli.output import console, emit_json

_STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red"}


@app.command("doctor")
def doctor_cmd(as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON on stdout.")) -> int:
    """Check that this machine can run the kit unattended; each finding ok, warn or fail with a one-line fix.

    Checks the litestream binary, WAL mode of every database, AWS_CA_BUNDLE, the env file's mode, the
    data dir and free disk, a write/read/delete probe of the replica, clock skew against the replica,
    and on macOS the power settings, FileVault and the launchd jobs. Exits 1 when anything fails.
    """
    report = doctor()
    if as_json:
        emit_json(report.as_dict())
    else:
        width = max((len(f.name) for f in report.findings), default=0)
        for f in report.findings:
            console.print(f"[{_STYLE[f.level]}]{f.level:<6}[/]{escape(f.name):<{width + 2}}{escape(f.message)}",
                          highlight=False, soft_wrap=True)
            if f.fix:
                console.print(f"{'':6}{'':<{width + 2}}[dim]fix:[/] {escape(f.fix)}", highlight=False, soft_wrap=True)
        counts = report.counts()
        console.print(f"{counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} fail")
    return int(ExitStatus.OK if report.ok else ExitStatus.CHECK_FAILED)
