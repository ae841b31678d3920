"""The `edgehost` program's entry point.

`edgehost promote` is sent to the follower before typer, rich and the typed settings load (a
failover's command start drops from ~0.25 s to ~0.05 s); every other command line, and a promote the
quick path cannot place, runs the full CLI (edgehost.cli).
"""

from __future__ import annotations

import sys


def run() -> None:
    args = sys.argv[1:]
    if "promote" in args:
        from edgehost.ops.promotion import quick_promote

        code = quick_promote(args)
        if code is not None:
            sys.exit(code)
    from edgehost.cli import run as run_cli

    run_cli()
