"""Cloudflare Access at the origin, against a real JWKS server on loopback and real RSA keys.

The matrix of tokens runs in process (Starlette's TestClient lets a test choose the client's
address); the loopback exemption is also checked over real HTTP with uvicorn.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import PyJWKClient
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from procs import free_port
from edgehost.settings import load_settings
from edgehost.portal.access import AccessConfig, AccessIdentity, AccessMiddleware, access_config, certs_url_for
from edgehost.errors import BadInput

TEAM = "acme"
ISSUER = "https://acme.cloudflareaccess.com"
AUD = "4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2"
OUTSIDE = ("203.0.113.7", 50000)  # a documentation address: not loopback


@dataclass
class Key:
    kid: str
    private: rsa.RSAPrivateKey

    @property
    def jwk(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "alg": "RS256", "use": "sig"}

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def new_key() -> Key:
    return Key(uuid.uuid4().hex, rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="session")
def keys() -> list[Key]:
    return [new_key() for _ in range(3)]


class JWKSServer:
    """Cloudflare's certs endpoint, played by a thread on 127.0.0.1: serves `keys`, counts fetches."""

    def __init__(self, keys: list[Key]):
        self.keys = list(keys)
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                body = json.dumps({"keys": [k.jwk for k in server.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/cdn-cgi/access/certs"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.running = True

    def rotate(self, key: Key) -> None:
        """Serve only `key` from now on, as after a rotation that retired the old key."""
        self.keys = [key]

    def down(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.running = False


@pytest.fixture
def jwks(keys) -> Iterator[JWKSServer]:
    server = JWKSServer(keys[:1])
    yield server
    server.down()


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    values = {"aud": [AUD], "iss": ISSUER, "iat": now, "nbf": now, "exp": now + 600, "sub": "7335d417-61da-459d-899c",
              "email": "ada@example.com", "type": "app", "identity_nonce": "6ei69kawdKzMIAPF", "country": "GB"}
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


def mint(key: Key, kid: str | None = None, **changes: Any) -> str:
    return jwt.encode(claims(**changes), key.private, algorithm="RS256", headers={"kid": kid or key.kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], sign=lambda signing_input: b"") -> str:
    """A token built by hand, the way an attacker would (PyJWT refuses to make these)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


@dataclass
class Portal:
    """A tiny app behind the middleware that records every call it gets."""

    middleware: AccessMiddleware
    calls: list[str] = field(default_factory=list)

    def client(self, address: tuple[str, int] = OUTSIDE) -> TestClient:
        return TestClient(self.middleware, client=address)

    def get(self, path: str = "/whoami", token: str | None = None, address: tuple[str, int] = OUTSIDE,
            **headers: str) -> httpx.Response:
        if token is not None:
            headers["Cf-Access-Jwt-Assertion"] = token
        return self.client(address).get(path, headers=headers)


def make_portal(jwks_url: str | None = None, **kwargs: Any) -> Portal:
    portal: Portal

    async def whoami(request):
        portal.calls.append(request.url.path)
        who: AccessIdentity = request.state.access_identity
        return JSONResponse({"kind": who.kind, "name": who.name, "email": who.email,
                             "common_name": who.common_name, "sub": who.sub})

    async def healthz(request):
        portal.calls.append(request.url.path)
        return JSONResponse({"ok": True})

    async def ws(websocket):
        portal.calls.append("/ws")
        await websocket.accept()
        await websocket.close()

    app = Starlette(routes=[Route("/whoami", whoami), Route("/healthz", healthz, methods=["GET", "POST"]),
                            WebSocketRoute("/ws", ws)])
    portal = Portal(AccessMiddleware(app, TEAM, AUD, jwks_url=jwks_url, **kwargs))
    return portal


@pytest.fixture
def portal(jwks) -> Portal:
    return make_portal(jwks.url)


def assert_refused(portal: Portal, response: httpx.Response, reason: str) -> None:
    assert response.status_code == 403, response.text
    assert reason in response.json()["error"]
    assert portal.calls == []


# ---------------------------------------------------------------- accepted


def test_a_user_token_is_accepted_and_the_app_sees_who(portal, keys):
    response = portal.get(token=mint(keys[0]))
    assert response.status_code == 200
    assert response.json() == {"kind": "user", "name": "ada@example.com", "email": "ada@example.com",
                               "common_name": None, "sub": "7335d417-61da-459d-899c"}
    assert portal.calls == ["/whoami"]


def test_a_service_token_is_accepted(portal, keys):
    token = mint(keys[0], email=None, sub="", common_name="a1b2c3d4.access")
    response = portal.get(token=token)
    assert response.status_code == 200
    assert response.json()["kind"] == "service"
    assert response.json()["name"] == "a1b2c3d4.access"


def test_small_clock_skew_is_tolerated(portal, keys):
    now = int(time.time())
    assert portal.get(token=mint(keys[0], exp=now - 3)).status_code == 200
    assert portal.get(token=mint(keys[0], nbf=now + 3, iat=now + 3)).status_code == 200


# ---------------------------------------------------------------- refused, and the app never called


def test_no_header_is_refused(portal):
    assert_refused(portal, portal.get(), "missing Cf-Access-Jwt-Assertion")


def test_two_headers_are_refused(portal, keys):
    token = mint(keys[0])
    response = portal.client().get("/whoami", headers=[("Cf-Access-Jwt-Assertion", token),
                                                       ("Cf-Access-Jwt-Assertion", token)])
    assert_refused(portal, response, "more than one")


def test_alg_none_is_refused(portal, keys):
    token = forge({"alg": "none", "typ": "JWT", "kid": keys[0].kid}, claims())
    assert_refused(portal, portal.get(token=token), "RS256")


def test_hs256_signed_with_the_public_key_is_refused(portal, keys):
    secret = keys[0].public_pem  # the classic key-confusion attack: the public key as an HMAC secret
    token = forge({"alg": "HS256", "typ": "JWT", "kid": keys[0].kid}, claims(),
                  lambda data: hmac.new(secret, data, hashlib.sha256).digest())
    assert_refused(portal, portal.get(token=token), "RS256")


def test_wrong_audience_is_refused(portal, keys):
    assert_refused(portal, portal.get(token=mint(keys[0], aud=["another-application-aud"])), "another application")


def test_wrong_issuer_is_refused(portal, keys):
    assert_refused(portal, portal.get(token=mint(keys[0], iss="https://evil.cloudflareaccess.com")), "not issued by")


def test_expired_token_is_refused(portal, keys):
    now = int(time.time())
    assert_refused(portal, portal.get(token=mint(keys[0], iat=now - 900, nbf=now - 900, exp=now - 60)), "expired")


def test_not_yet_valid_token_is_refused(portal, keys):
    now = int(time.time())
    assert_refused(portal, portal.get(token=mint(keys[0], nbf=now + 300)), "not valid yet")


def test_unknown_kid_is_refused(jwks, portal, keys):
    assert_refused(portal, portal.get(token=mint(keys[1])), "unknown key")
    assert jwks.fetches == 1  # the first fetch is as fresh as a refetch: no second one


def test_tampered_payload_is_refused(portal, keys):
    header, _, signature = mint(keys[0]).split(".")
    payload = _b64(json.dumps(claims(email="admin@example.com")).encode())
    assert_refused(portal, portal.get(token=f"{header}.{payload}.{signature}"), "signature")


def test_a_token_signed_by_another_key_under_a_known_kid_is_refused(portal, keys):
    assert_refused(portal, portal.get(token=mint(keys[1], kid=keys[0].kid)), "signature")


def test_a_token_naming_nobody_is_refused(portal, keys):
    assert_refused(portal, portal.get(token=mint(keys[0], email=None)), "neither a user nor a service")


def test_garbage_is_refused(portal):
    assert_refused(portal, portal.get(token="not.a.jwt"), "malformed")


def test_a_websocket_without_a_token_is_closed_before_accept(portal):
    with pytest.raises(WebSocketDisconnect) as refused:
        with portal.client().websocket_connect("/ws"):
            pass
    assert refused.value.code == 1008
    assert portal.calls == []


# ---------------------------------------------------------------- keys: rotation, outage, none at all


def test_a_rotated_key_is_accepted_after_one_refetch(jwks, portal, keys):
    old, new, forged = keys
    assert portal.get(token=mint(old)).status_code == 200
    assert jwks.fetches == 1

    jwks.rotate(new)
    assert portal.get(token=mint(new)).status_code == 200
    assert jwks.fetches == 2

    # The retired key is gone, and unknown kids cannot make the middleware hammer the endpoint.
    assert portal.get(token=mint(old)).status_code == 403
    for _ in range(5):
        assert portal.get(token=mint(forged, kid=uuid.uuid4().hex)).status_code == 403
    assert jwks.fetches == 2


def test_refetches_for_unknown_kids_are_rate_limited_not_forbidden(jwks, keys):
    portal = make_portal(jwks.url, refetch_interval=0.2)
    assert portal.get(token=mint(keys[0])).status_code == 200
    assert portal.get(token=mint(keys[1])).status_code == 403  # one refetch, key not there
    assert jwks.fetches == 2
    jwks.rotate(keys[1])
    assert portal.get(token=mint(keys[1])).status_code == 403  # within the interval: no refetch yet
    assert jwks.fetches == 2
    time.sleep(0.25)
    assert portal.get(token=mint(keys[1])).status_code == 200
    assert jwks.fetches == 3


def test_cached_keys_keep_working_while_the_jwks_server_is_down(jwks, keys):
    # A short-lived key-set cache, so the outage is met by an expired cache, not a fresh one.
    portal = make_portal(jwk_client=PyJWKClient(jwks.url, lifespan=0.1, timeout=2))
    assert portal.get(token=mint(keys[0])).status_code == 200
    jwks.down()
    time.sleep(0.15)
    assert portal.get(token=mint(keys[0])).status_code == 200
    assert portal.get(token=mint(keys[0], email="grace@example.com")).json()["name"] == "grace@example.com"
    assert portal.get(token=mint(keys[1])).status_code == 403  # still no unknown keys, and no 500


def test_no_keys_ever_fetched_means_refuse(keys):
    portal = make_portal(f"http://127.0.0.1:{free_port()}/cdn-cgi/access/certs")  # nothing listens there
    assert_refused(portal, portal.get(token=mint(keys[0])), "signing keys are unavailable")
    assert_refused(portal, portal.get(token=mint(keys[0])), "signing keys are unavailable")


# ---------------------------------------------------------------- the loopback health exemption


def test_healthz_needs_no_token_only_from_loopback(portal):
    assert portal.get("/healthz", address=("127.0.0.1", 50000)).status_code == 200
    assert portal.get("/healthz", address=("::1", 50000)).status_code == 200
    assert portal.calls == ["/healthz", "/healthz"]
    portal.calls.clear()
    assert_refused(portal, portal.get("/healthz"), "missing")
    # Through the tunnel cloudflared connects from loopback too: the edge's header gives it away.
    assert_refused(portal, portal.get("/healthz", address=("127.0.0.1", 50000), **{"Cf-Connecting-Ip": "198.51.100.4"}),
                   "missing")
    assert_refused(portal, portal.get("/whoami", address=("127.0.0.1", 50000)), "missing")
    response = portal.client(("127.0.0.1", 50000)).post("/healthz")
    assert_refused(portal, response, "missing")


@pytest.fixture
def served(jwks) -> Iterator[tuple[Portal, str]]:
    """The portal behind the middleware, served by uvicorn on a free loopback port."""
    portal = make_portal(jwks.url)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(portal.middleware, host="127.0.0.1", port=port, log_level="error",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield portal, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)


def test_over_real_http(served, keys):
    portal, url = served
    with httpx.Client(base_url=url) as http:
        assert http.get("/healthz").status_code == 200  # a local probe: loopback, no token
        assert http.get("/whoami").status_code == 403
        assert http.get("/healthz", headers={"Cf-Connecting-Ip": "198.51.100.4"}).status_code == 403
        response = http.get("/whoami", headers={"Cf-Access-Jwt-Assertion": mint(keys[0])})
        assert response.status_code == 200 and response.json()["email"] == "ada@example.com"
        assert response.status_code == 200
    assert portal.calls == ["/healthz", "/whoami"]


# ---------------------------------------------------------------- configuration


def test_access_settings_from_the_environment_or_edgehost_toml(tmp_path):
    def access_from_env(environ):
        return access_config(load_settings(tmp_path, environ).access)

    assert access_from_env({}) is None
    config = access_from_env({"EDGEHOST_ACCESS_TEAM": "acme", "EDGEHOST_ACCESS_AUD": f"{AUD}, second-aud"})
    assert config == AccessConfig("acme.cloudflareaccess.com", (AUD, "second-aud"), None)
    assert isinstance(config.wrap(Starlette()), AccessMiddleware)
    with pytest.raises(BadInput, match="EDGEHOST_ACCESS_AUD"):
        access_from_env({"EDGEHOST_ACCESS_TEAM": "acme"})
    with pytest.raises(BadInput, match="EDGEHOST_ACCESS_TEAM"):
        access_from_env({"EDGEHOST_ACCESS_AUD": AUD})
    with pytest.raises(BadInput, match="https"):
        access_from_env({"EDGEHOST_ACCESS_TEAM": "acme", "EDGEHOST_ACCESS_AUD": AUD,
                         "EDGEHOST_ACCESS_JWKS_URL": "http://203.0.113.7/certs"})
    local = access_from_env({"EDGEHOST_ACCESS_TEAM": "https://acme.cloudflareaccess.com/", "EDGEHOST_ACCESS_AUD": AUD,
                             "EDGEHOST_ACCESS_JWKS_URL": "http://127.0.0.1:9/certs"})
    assert local.team_domain == "acme.cloudflareaccess.com" and local.jwks_url == "http://127.0.0.1:9/certs"
    (tmp_path / "edgehost.toml").write_text(f"[access]\nteam = 'acme'\naud = ['{AUD}']\n")
    assert access_from_env({}) == AccessConfig("acme.cloudflareaccess.com", (AUD,), None)


def test_the_default_keys_come_from_the_team():
    assert certs_url_for("acme") == "https://acme.cloudflareaccess.com/cdn-cgi/access/certs"
    middleware = AccessMiddleware(Starlette(), "acme", AUD)
    assert middleware.issuer == ISSUER
    with pytest.raises(BadInput):
        AccessMiddleware(Starlette(), "not a team!", AUD)
    with pytest.raises(BadInput):
        AccessMiddleware(Starlette(), "acme", [])
