"""A tiny parent-death guard that runs one service.

The supervisor starts `python -m edgehost.supervisor.guard GRACE -- ARGV...` as the leader of a new
process group and keeps the write end of the guard's stdin. If the supervisor dies (even by
SIGKILL) the pipe closes, and the guard stops its child with SIGTERM (so Litestream still makes its
final sync), then SIGKILL after GRACE seconds. Signals the supervisor sends reach the child through
the process group; the guard only waits and hands back the child's exit status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

PID_MARKER = "\x00edgehost-guard child-pid="


def main(argv: list[str]) -> int:
    grace = float(argv[0])
    cmd = argv[argv.index("--") + 1 :]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)  # the child gets the group's signals itself
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    # Tell the supervisor the real pid (status shows it; the group is the guard's).
    sys.stdout.write(f"{PID_MARKER}{child.pid}\n")
    sys.stdout.flush()

    def watch_parent() -> None:
        while os.read(0, 4096):
            pass
        # EOF: the supervisor is gone. Stop the child the gentle way first.
        try:
            os.kill(child.pid, signal.SIGTERM)
            child.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    threading.Thread(target=watch_parent, daemon=True).start()
    code = child.wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
