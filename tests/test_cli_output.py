"""What a script reading stdout gets: data on stdout, people's text on stderr, JSON even for an error."""

from __future__ import annotations

import json

from procs import edgehost


def test_property_list_prints_slugs_on_stdout_one_a_line(kit_home):
    for slug in ("acme", "harbour-view"):
        added = edgehost(kit_home, "property", "add", slug, "--json")
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout) == {"slug": slug, "path": str(kit_home.path / "data" / slug / "honestcam.db")}
    listed = edgehost(kit_home, "property", "list")
    assert listed.returncode == 0 and listed.stdout == "acme\nharbour-view\n"


def test_status_json_without_a_supervisor_is_a_json_error_and_exit_3(kit_home):
    proc = edgehost(kit_home, "status", "--json")
    assert proc.returncode == 3
    body = json.loads(proc.stdout)
    assert body["ok"] is False and body["exit"] == 3 and "no supervisor running" in body["error"]
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_usage_error_with_json_is_json_too(kit_home):
    proc = edgehost(kit_home, "status", "--json", "--bogus")
    assert proc.returncode == 2 and json.loads(proc.stdout)["exit"] == 2


def test_migrate_json_says_what_it_applied(kit_home):
    first = edgehost(kit_home, "migrate", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert [d["name"] for d in report["databases"]] == ["global"] and report["restored"] == []
    assert (kit_home.path / "data" / "honestcam-study.db").exists()  # the replica holds none: created
    again = json.loads(edgehost(kit_home, "migrate", "--json").stdout)
    assert again["databases"] == [{"name": "global", "applied": []}] and again["restored"] == []


def test_brackets_in_an_error_message_survive(kit_home):
    (kit_home.path / "edgehost.toml").write_text("[tunnel]\nbinary = ['cloudflared']\n")
    proc = edgehost(kit_home, "config", "check")
    assert proc.returncode == 2
    assert "['cloudflared']" in proc.stderr, proc.stderr
