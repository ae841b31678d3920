"""The supervisor's log hub: prefixes, masking, and a full disk reported once instead of per line."""

import io

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
