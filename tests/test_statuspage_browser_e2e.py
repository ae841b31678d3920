"""The status page in a real headless Chromium: served by a real `edgehost up`, read as a user reads it,
on a desktop and on a phone."""

from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from edgehost.engine import layout
from edgehost.supervisor import statuspage
from procs import start_supervisor, sync_db, wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; .ci/run installs it
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE = {"width": 390, "height": 844}
# The screenshot in docs/ is rewritten only when asked: a test run leaves the work tree clean.
SCREENSHOT_ENV = "EDGEHOST_WRITE_SCREENSHOTS"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: install Debian's chromium package (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


def _page_width(page) -> tuple[int, int]:
    """The document's width and the viewport's. A mobile Chrome zooms out to fit a page wider than the
    phone, which widens innerWidth with it: both are compared with the phone's own width too."""
    return page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")


def test_the_supervisor_serves_a_page_a_person_can_read_on_a_desktop_and_a_phone(kit_home, browser, tmp_path):
    kit_home.env["AWS_SECRET_ACCESS_KEY"] = "never-on-the-page-4f1c"  # passed to litestream, never rendered
    settings = kit_home.settings()
    up = start_supervisor(kit_home)
    try:
        portal = settings.portal_url
        httpx.post(f"{portal}/properties", json={"slug": "acme"}).raise_for_status()
        for _ in range(3):
            httpx.post(f"{portal}/properties/acme/events", json={"kind": "k"}).raise_for_status()
        synced = sync_db(settings, layout.property_db(settings, "acme"))
        txid = f"{synced['txid']:x}"
        url = f"http://127.0.0.1:{settings.metrics_port}/status"

        def shows_acme_synced() -> bool:
            html = httpx.get(url, timeout=5).text
            return ">acme<" in html and f">{txid}<" in html

        wait_until(shows_acme_synced, 30, interval=0.5, what="the page to show acme at its synced txid")

        page = browser.new_page(viewport={"width": 1280, "height": 900})
        response = page.goto(url)
        assert response.status == 200 and response.headers["content-type"].startswith("text/html")
        services = page.locator("#services + table tbody tr")
        assert services.count() == 2
        for row, name in zip(services.all(), ("litestream", "portal")):
            assert row.locator("td").nth(0).inner_text() == name
            assert row.locator("td").nth(1).inner_text() == "running"
        rows = page.locator("#dbs tbody tr")
        names = [r.locator("td").first.inner_text() for r in rows.all()]
        assert "acme" in names and len(names) == len(layout.local_databases(settings))
        acme = rows.nth(names.index("acme"))
        assert acme.locator('td[data-label="local txid"]').inner_text() == txid
        assert acme.locator('td[data-label="replicated txid"]').inner_text() == txid
        assert acme.locator('td[data-label="last sync"]').inner_text().endswith("ago")
        assert f"{len(names)} databases" in page.locator("#db-summary").inner_text()
        assert "No drill yet" in page.inner_text("body")
        assert "never-on-the-page" not in page.content()
        page.close()

        # On a phone: every row is a card, nothing runs off the right edge.
        phone = browser.new_page(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
        phone.goto(url)
        width, inner = _page_width(phone)
        assert width <= inner == PHONE["width"], \
            f"the page scrolls sideways on a phone: {width}px in a {inner}px viewport"
        assert phone.locator("#dbs thead").is_hidden()  # the header row gives way to a label per cell
        assert phone.locator("#dbs tbody tr").first.bounding_box()["width"] <= inner
        phone.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
        phone.close()

        # /metrics is unchanged next to it
        metrics = httpx.get(f"http://127.0.0.1:{settings.metrics_port}/metrics").text
        assert 'edgehost_service_up{service="litestream"} 1' in metrics
    finally:
        assert up.stop() == 0, up.output()


# --- the screenshot in docs/: a model with drills, alerts and a cost, which a fresh supervisor lacks ----------


def demo_model(now: float) -> dict:
    start = datetime.fromtimestamp(now, timezone.utc)
    dbs = [{"name": f"property-{i:03d}", "state": "replicating", "local_txid": 0x1a40 + i * 7,
            "replicated_txid": 0x1a40 + i * 7, "last_sync_at": now - 1 - i % 4, "lag_seconds": 0.0,
            "wal_bytes": 4096 * (1 + i % 9), "error": "", "pitr_seconds": 7 * 86400 if i % 3 else None}
           for i in range(240)]
    dbs[17].update(replicated_txid=dbs[17]["local_txid"] - 3, lag_seconds=95.0, last_sync_at=now - 95)
    dbs[42].update(state="error", replicated_txid=dbs[42]["local_txid"] - 2, lag_seconds=None, last_sync_at=now - 400,
                   error="write ltx file: operation error S3: PutObject, 503 SlowDown")
    dbs[5].update(replicated_txid=dbs[5]["local_txid"] - 1, lag_seconds=2.0, last_sync_at=now - 2)
    dbs.append({"name": "honestcam-study.db", "state": "replicating", "local_txid": 0x9f21, "replicated_txid": 0x9f21,
                "last_sync_at": now - 1, "lag_seconds": 0.0, "wal_bytes": 2_400_000, "error": "",
                "pitr_seconds": 7 * 86400})
    drills = []
    for week in range(10):
        when = start - timedelta(days=7 * week, hours=3)
        drills.append({"started_at": when.isoformat(), "status": "fail" if week == 4 else "pass",
                       "scenario": "all-databases", "rpo_seconds": [1.2, 0.9, 1.6, 1.1, 8.4, 1.3, 1.0, 2.2, 1.4, 1.1][week],
                       "rto_seconds": [41, 39, 44, 40, 97, 52, 47, 45, 43, 42][week], "databases": 241,
                       "failed": 1 if week == 4 else 0})
    alerts = [
        {"time": (start - timedelta(minutes=1)).isoformat(), "kind": "alert", "event": "lag",
         "severity": "critical", "database": "property-017", "summary": "replica is 95s behind (threshold 60s)"},
        {"time": (start - timedelta(minutes=6)).isoformat(), "kind": "alert", "event": "replication_error",
         "severity": "critical", "database": "property-042",
         "summary": "litestream reports: write ltx file: operation error S3: PutObject, 503 SlowDown"},
        {"time": (start - timedelta(hours=5)).isoformat(), "kind": "recovery", "event": "lag", "severity": "info",
         "database": "property-108", "summary": "replica caught up: replicated txid = local txid"},
    ]
    services = [{"name": "litestream", "state": "running", "pid": 4121, "restarts": 0, "uptime_seconds": 1_036_800,
                 "last_exit": None, "reason": ""},
                {"name": "portal", "state": "running", "pid": 4188, "restarts": 1, "uptime_seconds": 86_700,
                 "last_exit": -9, "reason": ""},
                {"name": "cloudflared", "state": "running", "pid": 4203, "restarts": 0, "uptime_seconds": 1_036_790,
                 "last_exit": None, "reason": ""}]
    return {"host": "mac-mini.local", "now": now, "phase": "running", "uptime_seconds": 1_036_810,
            "services": services, "lease": {"held": True, "fenced": False}, "lag_alert_seconds": 60.0,
            "alerting": ["property-017", "property-042"], "databases": dbs, "drills": drills, "alerts": alerts,
            "cost": {"bill_after_free_tier": 0.36, "storage_gb": 3.1, "class_a_per_month": 412_000, "class_b_per_month": 96_000}}


@pytest.fixture
def demo_server():
    html = statuspage.render(demo_model(datetime(2025, 10, 9, 9, 30, tzinfo=timezone.utc).timestamp()), per_page=12)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            data = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/status"
    server.shutdown()
    server.server_close()


def test_a_page_with_drills_and_alerts_charts_them_and_fits_a_phone(browser, demo_server, tmp_path):
    out = REPO / "docs" / "img" if os.environ.get(SCREENSHOT_ENV) else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    requests: list[str] = []
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.on("request", lambda r: requests.append(r.url))
    page.goto(demo_server)
    assert requests == [demo_server]  # no external asset: the page is the only request
    charts = page.locator("figure.chart svg")
    assert charts.count() == 2
    assert charts.first.bounding_box()["width"] > 200
    assert page.locator("figure.chart svg circle").count() == 20
    assert "page 1 of 21" in page.inner_text("nav.pages >> nth=0")
    assert page.locator("#dbs tbody tr").first.locator("td").first.inner_text() == "property-042"  # the error leads
    assert "95s behind" in page.inner_text("#alert-list")
    assert "$0.36" in page.inner_text("dl.cost")
    page.screenshot(path=str(out / "status-page.png"), full_page=True)
    page.close()

    phone = browser.new_page(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    phone.goto(demo_server)
    width, inner = _page_width(phone)
    assert width <= inner == PHONE["width"], \
        f"the page scrolls sideways on a phone: {width}px in a {inner}px viewport"
    phone.screenshot(path=str(out / "status-page-phone.png"), full_page=False)
    phone.close()
    assert (out / "status-page.png").stat().st_size > 20_000
