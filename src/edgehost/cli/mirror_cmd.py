"""`edgehost mirror`."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer

from edgehost.engine import litestream
from edgehost.errors import ExitStatus
from edgehost.ops.mirror import MirrorReport, mirror_once
from edgehost.ops.restore import parse_duration
from edgehost.settings import load_settings
from edgehost.cli import app
from edgehost.cli.output import console, emit_json


def _line(report: MirrorReport) -> str:
    text = (f"mirror {report.to}: {report.databases} database(s), {report.listed} files listed "
            f"({report.list_pages} LIST page(s)), {report.fetched} fetched ({report.fetched_bytes / 1e6:.1f} MB), "
            f"{report.deleted} deleted, {report.pending_delete} kept past the bucket, {report.seconds:.2f}s")
    return text + "".join(f"\n  error: {e}" for e in report.errors)


@app.command("mirror")
def mirror(
    to: Path = typer.Option(..., "--to", help="The mirror directory (a USB disk or NAS): created, or an existing mirror."),
    watch: bool = typer.Option(False, "--watch", help="Keep it current: a round every --interval until stopped."),
    interval: str = typer.Option("60s", "--interval", help="Time between rounds with --watch (30s, 5m, 1h)."),
    grace: str = typer.Option(
        "1h", "--grace", help="Delete a file the bucket no longer lists only after it was missing this long."),
    as_json: bool = typer.Option(False, "--json", help="Print each round's report as JSON on stdout."),
) -> None:
    """Keep a local copy of the replica that `edgehost restore --from DIR` restores with no network.

    The copy is laid out as a Litestream file replica (DIR/<db>/ltx/<level>/...), so plain
    `litestream restore -o OUT file://DIR/<slug>/honestcam.db` works on it too. Each round lists the
    replica once (one LIST page per 1,000 files), downloads only new files, each checked against its
    listed size and ETag, and deletes files the bucket deleted (Litestream's compaction and retention)
    after --grace, so an emptied bucket does not empty the mirror. Exit 0 when the round (every round
    with --watch) fetched everything, 1 otherwise.
    """
    settings = load_settings()
    every, keep = parse_duration(interval, "--interval"), parse_duration(grace, "--grace")
    ls = litestream.Litestream.from_settings(settings)
    stop = threading.Event()
    if watch:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    failed = False
    while True:
        report = mirror_once(settings, ls, to, grace=keep)
        failed |= not report.ok
        if as_json:
            emit_json(report)
        else:
            console.print(_line(report), highlight=False, soft_wrap=True)
        if not watch or stop.wait(every):
            break
    if failed:
        raise typer.Exit(int(ExitStatus.CHECK_FAILED))
