"""The status page as HTML: what it shows, what it escapes, how it pages 1,000 databases, what it never links."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from edgehost.ops.status import DatabaseStatus
from edgehost.supervisor import statuspage

NOW = 1_760_000_000.0  # 2025-10-09 08:53:20 UTC
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def db(name: str, **fields) -> dict:
    base = {"name": name, "path": f"/data/{name}/honestcam.db", "state": "replicating", "local_txid": 0x2a,
            "replicated_txid": 0x2a, "last_sync_at": NOW - 3, "lag_seconds": 0.0, "wal_bytes": 4096, "error": "",
            "caught_up": True, "pitr_seconds": None}
    return {**base, **fields}


def model(**changes) -> dict:
    base = {
        "host": "mini.local", "now": NOW, "phase": "running", "uptime_seconds": 3700.0,
        "services": [{"name": "litestream", "state": "running", "pid": 11, "restarts": 0, "uptime_seconds": 3690.0,
                      "last_exit": None, "reason": ""},
                     {"name": "portal", "state": "backoff", "pid": None, "restarts": 3, "uptime_seconds": 0.0,
                      "last_exit": 1, "reason": ""}],
        "lease": {"held": True, "fenced": False, "machine_id": "m1"},
        "lag_alert_seconds": 60.0, "alerting": [],
        "databases": [db("acme"), db("bravo", lag_seconds=12.0, replicated_txid=0x29, caught_up=False)],
        "drills": [], "alerts": [], "cost": None,
    }
    return {**base, **changes}


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> _Tags:
    p = _Tags()
    p.feed(page)
    return p


def db_rows(page: str) -> list[str]:
    body = page.split('id="dbs"', 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr><td[^>]*>(.*?)</td>", body.split("<tbody>", 1)[1])


def test_the_page_shows_services_databases_and_the_header():
    page = statuspage.render(model())
    text = " ".join(parse(page).text)
    assert "edgehost on mini.local" in text
    assert "litestream" in text and "running" in text and "1 h" in text  # uptime
    assert "backoff" in text and "last exit code 1" in text
    assert "2 databases" in text
    assert "3 s ago" in text  # last sync
    assert "12 s" in text  # bravo's lag
    assert "29" in text and "2a" in text  # short txids, replica behind local
    assert "4.0 KiB" in text
    assert "writer lease" in text and "held" in text


def test_an_unknown_pitr_window_shows_a_dash_and_a_known_one_its_span():
    page = statuspage.render(model(databases=[db("acme", pitr_seconds=None), db("bravo", pitr_seconds=7 * 86400)]))
    cells = re.findall(r'data-label="PITR window" class="num">(.*?)</td>', page)
    assert sorted(cells) == ["7 d", "—"]


def test_hostile_names_errors_and_alert_texts_are_escaped():
    m = model(host=HOSTILE, databases=[db(HOSTILE, state="error", error=HOSTILE)],
              alerts=[{"time": "2025-10-09T08:50:00+00:00", "kind": "alert", "event": "lag", "severity": "critical",
                       "database": HOSTILE, "summary": HOSTILE}],
              drills=[{"started_at": "2025-10-01T02:00:00+00:00", "status": "fail", "scenario": HOSTILE,
                       "rpo_seconds": 1.0, "rto_seconds": 2.0, "databases": 1, "failed": 1}],
              cost={HOSTILE: HOSTILE}, alerting=[HOSTILE])
    page = statuspage.render(m)
    tags = parse(page).tags
    assert "script" not in [t for t, _ in tags]
    assert not [a for _, attrs in tags for a in attrs if a.startswith("on")]
    assert "<script" not in page and "<img" not in page
    assert page.count("&lt;script&gt;") >= 6  # title, h1, name, error, alert db, summary, cost, alerting


def test_databases_come_worst_first_errors_then_lag():
    dbs = [db("calm"), db("slow", lag_seconds=30.0), db("broken", state="error", error="write ltx file: boom"),
           db("slower", lag_seconds=300.0), db("fresh", state="not replicated", local_txid=None, replicated_txid=None,
                                              lag_seconds=None, last_sync_at=None)]
    page = statuspage.render(model(databases=dbs))
    assert db_rows(page) == ["broken", "fresh", "slower", "slow", "calm"]
    text = "".join(parse(page).text)
    assert "1 behind the 1 min alert threshold" in text
    assert "worst lag 5 min (slower)" in text


def test_a_thousand_databases_page_by_a_hundred_with_a_summary_of_all():
    dbs = [db(f"tenant-{i:04d}", lag_seconds=float(i % 7)) for i in range(1000)]
    dbs[500] = db("tenant-0500", state="error", error="ltx file missing")
    page1 = statuspage.render(model(databases=dbs))
    assert len(db_rows(page1)) == 100
    assert db_rows(page1)[0] == "tenant-0500"  # the one error leads
    assert "1000 databases" in page1 and "999 replicating" in page1 and "1 error" in page1
    assert "page 1 of 10" in page1 and 'href="?page=2"' in page1 and 'href="?page=0"' not in page1
    page10 = statuspage.render(model(databases=dbs), page=10)
    assert len(db_rows(page10)) == 100 and "page 10 of 10" in page10 and 'href="?page=11"' not in page10
    everyone = set()
    for n in range(1, 11):
        everyone |= set(db_rows(statuspage.render(model(databases=dbs), page=n)))
    assert len(everyone) == 1000
    assert "page 10 of 10" in statuspage.render(model(databases=dbs), page=99)  # clamped, not empty


@pytest.mark.parametrize("query, page", [("", 1), ("page=3", 3), ("page=abc", 1), ("page=-2", 1), ("x=1&page=2", 2)])
def test_the_page_number_comes_from_the_query_string(query, page):
    assert statuspage.page_number(query) == page


def test_no_external_url_anywhere_and_a_phone_viewport():
    drills = [{"started_at": f"2025-10-0{d}T02:00:00+00:00", "status": "pass", "scenario": "full",
               "rpo_seconds": 1.0 + d, "rto_seconds": 10.0 * d, "databases": 3, "failed": 0} for d in range(1, 6)]
    page = statuspage.render(model(drills=drills, cost={"bill_after_free_tier": 1.25}))
    assert not re.search(r"(https?:)?//[a-z0-9]", page, re.IGNORECASE), "an external URL in the page"
    tags = parse(page).tags
    for tag, attrs in tags:
        for key in ("src", "href", "action", "xlink:href"):
            assert not attrs.get(key, "").lstrip().lower().startswith(("http", "//", "data:", "javascript")), (tag, attrs)
        assert tag not in ("script", "link", "iframe", "img")
    assert ("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}) in tags
    assert "@import" not in page and "url(" not in page


def test_drills_are_charted_as_inline_svg_with_one_point_each():
    drills = [{"started_at": f"2025-10-0{d}T02:00:00+00:00", "status": "fail" if d == 3 else "pass",
               "scenario": "full", "rpo_seconds": 1.0 + d, "rto_seconds": 10.0 * d, "databases": 3,
               "failed": int(d == 3)} for d in range(1, 6)]
    page = statuspage.render(model(drills=list(reversed(drills))))  # newest first, as drill_history gives them
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 2
    for svg in svgs:
        assert svg.count("<circle") == 5 and "<polyline" in svg
        assert svg.count('class="bad"') == 1  # the failed drill stands out
    assert "RPO" in svgs[0] and "RTO" in svgs[1]
    # time runs left to right: the oldest drill's point is leftmost
    xs = [float(x) for x in re.findall(r'<circle[^>]*cx="([\d.]+)"', svgs[1])]
    assert xs == sorted(xs)
    assert "latest 50 s" in page  # RTO of the newest drill


def test_without_drills_alerts_or_cost_each_part_says_so():
    text = " ".join(parse(statuspage.render(model())).text)
    assert "No drill yet" in text and "edgehost drill" in text
    assert "No alert sent recently" in text
    assert "No estimate yet" in text
    assert "<svg" not in statuspage.render(model())


def test_alerts_and_recoveries_are_listed_newest_first_as_given():
    alerts = [{"time": "2025-10-09T08:52:20+00:00", "kind": "recovery", "event": "lag", "severity": "info",
               "database": "acme", "summary": "acme replica caught up"},
              {"time": "2025-10-09T08:43:20+00:00", "kind": "alert", "event": "lag", "severity": "critical",
               "database": "acme", "summary": "acme replica is 95s behind"}]
    text = " ".join(parse(statuspage.render(model(alerts=alerts))).text)
    assert text.index("1 min ago") < text.index("10 min ago")
    assert "recovered" in text and "critical" in text and "acme replica is 95s behind" in text


def test_cost_renders_known_keys_and_whatever_else_is_there():
    cost = {"bill_after_free_tier": 0.4321, "class_a_per_month": 123456, "class_b_per_month": 7890.0, "storage_gb": 1.5,
            "provider": "r2", "breakdown": {"nested": 1}}
    text = " ".join(parse(statuspage.render(model(cost=cost))).text)
    assert "$0.43" in text and "123,456" in text and "7,890" in text and "1.50 GB" in text and "r2" in text
    assert "nested" not in text
    partial = " ".join(parse(statuspage.render(model(cost={"bill_after_free_tier": None, "storage_gb": 2}))).text)
    assert "2.00 GB" in partial and "estimated this month" not in partial


def test_the_model_carries_database_status_and_a_pitr_hook_but_no_settings():
    st = DatabaseStatus("acme", "/d/acme/honestcam.db", "replicating", 5, 5, "2025-10-09T08:53:17Z", 0.0, 0, "", True)
    described = {"phase": "running", "uptime_seconds": 5.0, "services": [], "lease": {}, "lag_alert_seconds": 60,
                 "alerts": []}
    m = statuspage.build_model(described, [st], [], [], None, "mini", NOW)
    assert m["databases"][0]["pitr_seconds"] is None and m["databases"][0]["local_txid"] == 5
    assert "3 s ago" in statuspage.render(m)  # litestream's RFC 3339 time is read


def test_span_and_ago_read_as_people_say_them():
    assert statuspage.span(0) == "0 s" and statuspage.span(2.5) == "2.5 s" and statuspage.span(42) == "42 s"
    assert statuspage.span(125) == "2 min 5 s" and statuspage.span(7260) == "2 h 1 min"
    assert statuspage.span(90000) == "1 d 1 h" and statuspage.span(None) == "—"
    assert statuspage.ago(NOW - 3.4, NOW) == "3 s ago" and statuspage.ago(None, NOW) == "—"


def test_the_drill_history_is_read_at_most_once_per_ttl():
    calls = []

    def read():
        calls.append(1)
        return [{"status": "pass"}]

    cache = statuspage.CachedDrills(read, ttl=60)
    assert cache.get() == cache.get() == [{"status": "pass"}]
    assert len(calls) == 1
    broken = statuspage.CachedDrills(lambda: (_ for _ in ()).throw(OSError("state db gone")))
    assert broken.get() == []
