"""HTTP to this machine's own processes: the portal, litestream's and the supervisor's unix sockets,
metrics endpoints on 127.0.0.1.

Plain HTTP, never TLS, so the clients here load no certificate store. An httpx client built with the
default `verify=True` loads the CA bundle: 25-65 ms of CPU per client on the Mac mini class of machine
this runs on, which a readiness probe that built one per call paid on every tick of a start.
"""

from __future__ import annotations

import threading

import httpx

_shared: httpx.Client | None = None
_lock = threading.Lock()


def client(uds: str | None = None, base_url: str = "", timeout: float = 10.0) -> httpx.Client:
    """A client for plain HTTP on loopback, or over the unix socket `uds`."""
    transport = httpx.HTTPTransport(uds=uds, verify=False) if uds else None
    return httpx.Client(transport=transport, base_url=base_url, timeout=timeout, verify=False)


def get(url: str, timeout: float) -> httpx.Response:
    """GET an http:// URL of this machine with one client kept for the process (thread-safe)."""
    global _shared
    if not url.startswith("http://"):
        raise ValueError(f"{url}: only plain http to this machine goes through the loopback client")
    with _lock:
        if _shared is None:
            _shared = client()
    return _shared.get(url, timeout=timeout)
