"""The supervisor's log hub: prefixes, masking, and a full disk reported once instead of per line."""

import io
import time

from edgehost.supervisor.logs import LogHub


class _FullDisk:
    closed = False

    def write(self, _text):
        raise OSError(28, "No space left on device")

    def flush(self):
        pass

    def close(self):
        pass


def test_lines_are_prefixed_masked_and_written_to_the_service_file(tmp_path):
    out = io.StringIO()
    hub = LogHub(tmp_path, secrets=["s3cr3t-value"], stream=out)
    hub.line("portal", "key is s3cr3t-value\n")
    hub.close()
    assert out.getvalue() == "[portal] key is ***\n"
    assert (tmp_path / "portal.log").read_text().rstrip().endswith("key is ***")


def test_a_full_disk_is_reported_once_and_its_end_once(tmp_path, capsys):
    out = io.StringIO()
    hub = LogHub(tmp_path, stream=out)
    hub.line("svc", "before")
    handler = hub._handler("svc")
    real, handler.stream = handler.stream, _FullDisk()
    for i in range(200):
        hub.line("svc", f"line {i}")
    handler.stream = real
    hub.line("svc", "after")
    text = out.getvalue()
    assert text.count("cannot write") == 1 and text.count("writing") == 1
    assert text.count("[svc]") == 202  # stdout kept every line
    assert "Traceback" not in capsys.readouterr().err


def test_a_stop_signal_that_lands_while_the_supervisor_logs_still_stops_it(kit_home):
    """A signal handler runs on the main thread between two bytecodes, so it can land while that
    thread holds the log hub's lock. It used to log from the handler and deadlock: `up` then never
    stopped (seen as a hung `kill -TERM`)."""
    import signal
    import threading

    from edgehost.supervisor.run import Supervisor

    out = io.StringIO()
    sup = Supervisor(kit_home.settings(), stream=out)
    threading.Thread(target=sup._signal_worker, daemon=True).start()
    handled = threading.Event()

    def main_thread_mid_line() -> None:
        with sup.hub._lock:  # inside hub.line when the signals arrive
            sup._on_stop_signal(signal.SIGTERM, None)
            sup._on_stop_signal(signal.SIGINT, None)
        handled.set()

    threading.Thread(target=main_thread_mid_line, daemon=True).start()
    assert handled.wait(5), "the signal handler blocked on the log lock: the supervisor would never stop"
    assert sup.stopping.is_set() and sup.hurry.is_set()
    deadline = time.monotonic() + 5
    while "hurrying" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "SIGTERM: stopping in reverse order" in out.getvalue() and "SIGINT again: hurrying the stop" in out.getvalue()
    sup.hub.close()
