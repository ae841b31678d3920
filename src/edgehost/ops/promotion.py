"""`edgehost promote`'s side: ask the `edgehost follow` running here to take over.

Kept apart from ops/follow.py, which loads the supervisor: this module imports only the standard
library and the kit's errors, so `edgehost promote` can send its request before typer, rich and the
typed settings are loaded (`quick_promote`, ~0.2 s of a failover's command start).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from edgehost.errors import BadInput, EdgehostError, EnvironmentProblem, ExitStatus

# Where the follower of a home with the default settings listens (Settings: state_dir "state",
# supervisor_socket). The follower confirms the home and socket a quick request names, so a home
# configured otherwise (or a socket left by another home) only ever costs the quick path a fallback.
DEFAULT_SOCKET = Path("state") / "supervisor.sock"
# Seconds `edgehost promote` waits for the whole promotion (--timeout): the wait for a live old primary
# alone is (ttl + renew) / 2 + 5 by its lease (605 s with the defaults), then the catch-up.
PROMOTE_TIMEOUT = 3600.0
MISDIRECTED = 421  # the follower's answer to a request meant for another home or socket
# Set in the environment, these may put the socket elsewhere: the full command reads them.
_SETTINGS_ELSEWHERE = ("EDGEHOST_STATE_DIR", "EDGEHOST_SETTINGS", "EDGEHOST_ENV_FILE")


class _UnixHTTP(http.client.HTTPConnection):
    """HTTP over the follower's unix socket with the standard library: httpx and the TLS context it
    builds would double the command's start, and every tenth of a second counts in a failover."""

    def __init__(self, path: str, timeout: float):
        super().__init__("edgehost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class NotSent(Exception):
    """Nothing was asked of any follower (no socket there, nobody listening, or one serving another
    home): the caller may look for the follower another way."""


def request_promotion(sock: Path, no_wait: bool, timeout: float, home: Path | None = None) -> dict[str, Any]:
    """Ask the follower listening on `sock` to promote itself; its report.

    The request names `sock`: a follower whose own settings put its socket elsewhere answers 421 and
    starts nothing. `home`: a quick request, which guessed `sock` from the home alone, names the home
    too (a follower of another home refuses it), and any answer that started nothing (no socket
    there, nobody listening, 421, 404) is NotSent, for the full command to look again with the
    settings."""
    quick = home is not None
    if not sock.exists():
        if quick:
            raise NotSent(f"no socket at {sock}")
        raise EnvironmentProblem("no `edgehost follow` is running here (no control socket in the state dir)")
    conn = _UnixHTTP(str(sock), timeout)
    query = {**({"no_wait": "1"} if no_wait else {}), **({"home": str(home)} if quick else {}), "socket": str(sock)}
    try:
        try:
            conn.connect()
        except OSError as exc:
            if quick:
                raise NotSent(f"nobody listens on {sock}") from None
            raise EnvironmentProblem(f"the follower does not answer on {sock}: {type(exc).__name__}") from None
        try:
            conn.request("POST", f"/promote?{urlencode(query)}", headers={"Content-Length": "0"})
            answer = conn.getresponse()
            status, body = answer.status, answer.read()
        except TimeoutError:
            raise EnvironmentProblem(f"the promotion did not finish within {timeout:g}s (--timeout); "
                                     f"`edgehost status` shows where it stands") from None
        except (OSError, http.client.HTTPException) as exc:
            raise EnvironmentProblem(f"the follower does not answer on {sock}: {type(exc).__name__}") from None
    finally:
        conn.close()
    try:
        report = json.loads(body)
    except ValueError:
        report = None
    if status in (MISDIRECTED, 404) and quick:
        raise NotSent(f"{sock} answered {status}")  # nothing started: the full command looks again
    if status == MISDIRECTED:
        why = report.get("error") if isinstance(report, dict) else ""
        raise EnvironmentProblem(f"the follower on {sock} is not this home's ({why or 'it serves another'}): "
                                 f"nothing was promoted")
    if status == 404:  # `edgehost up` answers there, and knows no promotion
        raise BadInput("this machine is not following (it runs `edgehost up`): nothing to promote")
    if not isinstance(report, dict):
        raise EnvironmentProblem(f"the follower answered {status} without a report")
    return report


def valid_timeout(seconds: float) -> bool:
    """--timeout: a positive, finite number of seconds."""
    return math.isfinite(seconds) and seconds > 0


def _quick_args(args: list[str]) -> tuple[Path, bool, bool, float] | None:
    """(home, --no-wait, --json, --timeout) of `edgehost [--home H] promote [options]`, or None for
    any other command line (help, a typo, another verb: typer parses those)."""
    home, rest = None, list(args)
    if rest[:1] == ["--home"] and len(rest) > 1:
        home, rest = rest[1], rest[2:]
    elif rest[:1] and rest[0].startswith("--home="):
        home, rest = rest[0].partition("=")[2], rest[1:]
    if rest[:1] != ["promote"]:
        return None
    no_wait = as_json = False
    timeout, i = PROMOTE_TIMEOUT, 1
    while i < len(rest):
        arg = rest[i]
        if arg == "--no-wait":
            no_wait = True
        elif arg == "--json":
            as_json = True
        elif arg == "--timeout" or arg.startswith("--timeout="):
            value = arg.partition("=")[2] if "=" in arg else (rest[i + 1] if i + 1 < len(rest) else "")
            i += 0 if "=" in arg else 1
            try:
                timeout = float(value)
            except ValueError:
                return None
            if not valid_timeout(timeout):
                return None  # typer's path says why
        else:
            return None
        i += 1
    # `--home ""` is the current directory, as typer reads it (Path("") is ".")
    where = Path(home if home is not None else os.environ.get("EDGEHOST_HOME") or Path.cwd()).resolve()
    return where, no_wait, as_json, timeout


def quick_promote(args: list[str]) -> int | None:
    """`edgehost promote` with the standard library alone, when the follower of this home listens
    where the default settings put it; its exit code. None: nothing was sent, the full command runs
    (settings loaded, every error worded as usual)."""
    parsed = _quick_args(args)
    if parsed is None or any(name in os.environ for name in _SETTINGS_ELSEWHERE):
        return None
    home, no_wait, as_json, timeout = parsed
    try:
        report = request_promotion(home / DEFAULT_SOCKET, no_wait, timeout, home=home)
    except NotSent:
        return None
    except KeyboardInterrupt:
        return 130  # as the full command: the follower goes on with what it was asked
    except EdgehostError as exc:
        from edgehost.cli import fail  # the promotion is over: the rest of the CLI may load now

        return fail(int(exc.status), str(exc), as_json, markup=True)
    return show_report(report, as_json)


def show_report(report: dict[str, Any], as_json: bool) -> int:
    """Print a promotion's report (JSON on stdout, or lines on stderr); the exit code."""
    if as_json:  # as edgehost.cli.output.emit_json writes it, without loading rich
        sys.stdout.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
        sys.stdout.flush()
    else:
        from edgehost.cli.output import console

        for name, seconds in report.get("steps", {}).items():
            console.print(f"{name:16} {seconds:8.2f}s")
        if report.get("ok"):
            console.print(f"[green]promoted[/]: this machine is the primary ({report.get('databases')} databases, "
                          f"{report.get('total_seconds', 0):.2f}s); previous primary: {report.get('previous_primary') or '-'}")
            for note in report.get("notes", []):
                console.print(f"note: {note}")
        else:
            console.print(f"[red]promote failed[/]: {report.get('error')}")
    return int(ExitStatus.OK if report.get("ok") else ExitStatus.CHECK_FAILED)
