"""Cloudflare Access at the origin: every request must carry a valid Access JWT.

Access at the edge only guards traffic that goes through Cloudflare. Anything that reaches the
portal another way (a LAN client, a second tunnel, a misrouted hostname) would skip it, so the
portal checks the `Cf-Access-Jwt-Assertion` header itself: RS256 only, signed by one of the team's
keys, for this application's AUD tag, issued by the team, and in date.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Awaitable, Callable, Literal, Mapping, MutableMapping, Sequence
from urllib.parse import urlsplit

import jwt
from jwt import PyJWK, PyJWKClient
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from edgehost.errors import BadInput
from edgehost.portal import DURABLE_PATH
from edgehost.settings import AccessSettings

log = logging.getLogger(__name__)

HEADER = "cf-access-jwt-assertion"
ALGORITHM = "RS256"
DEFAULT_LEEWAY = 10.0  # seconds of clock skew tolerated on exp/nbf/iat
DEFAULT_REFETCH_INTERVAL = 30.0  # at most one JWKS refetch per this many seconds for unknown kids
DEFAULT_JWKS_LIFESPAN = 300.0  # how long PyJWKClient trusts its cached key set before refetching
DEFAULT_JWKS_TIMEOUT = 5.0
HEALTH_PATH = "/healthz"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_TEAM_DOMAIN = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


class AccessDenied(Exception):
    """A request without a valid Access token; the message is safe to show the client."""


@dataclass(frozen=True)
class AccessIdentity:
    """Who Access let in: a person (email) or a service token (common_name)."""

    kind: Literal["user", "service"]
    email: str | None
    common_name: str | None
    sub: str
    claims: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.email or self.common_name or ""


def access_team_domain(team: str) -> str:
    """`myteam`, `myteam.cloudflareaccess.com` or `https://myteam.cloudflareaccess.com/` -> the team's domain."""
    domain = team.strip().lower()
    domain = domain.removeprefix("https://").rstrip("/")
    if domain and "." not in domain:
        domain = f"{domain}.cloudflareaccess.com"
    if not _TEAM_DOMAIN.match(domain):
        raise BadInput(f"Access team {team!r}: expected the team name or <team>.cloudflareaccess.com")
    return domain


def certs_url_for(domain: str) -> str:
    """Where Access publishes the team's signing keys (a JWKS)."""
    return f"https://{access_team_domain(domain)}/cdn-cgi/access/certs"


class SigningKeys:
    """The team's signing keys, by kid.

    PyJWKClient fetches and caches the key set. On top of it: the last key set that was fetched
    successfully keeps serving while the JWKS endpoint is down, a kid not in the set triggers at
    most one forced refetch per `refetch_interval` (so forged kids cannot hammer the endpoint),
    and a failed fetch is not retried within that interval either (so an outage does not add a
    network timeout to every request).
    """

    def __init__(self, client: PyJWKClient, refetch_interval: float = DEFAULT_REFETCH_INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self._client = client
        self._interval = refetch_interval
        self._clock = clock
        self._known: dict[str, PyJWK] = {}
        self._ever_fetched = False
        self._last_forced = -math.inf
        self._last_failure = -math.inf
        self._lock = threading.Lock()

    @property
    def ever_fetched(self) -> bool:
        return self._ever_fetched

    def get(self, kid: str) -> PyJWK | None:
        """The key for `kid`, or None when the team has no such key (or none could ever be fetched)."""
        with self._lock:
            keys, fetched = self._load(refresh=False)
            # A set fetched just now is as fresh as a forced refetch would be: don't fetch twice.
            if kid not in keys and not fetched and self._clock() - self._last_forced >= self._interval:
                self._last_forced = self._clock()
                keys, _ = self._load(refresh=True)
            return keys.get(kid)

    def _load(self, *, refresh: bool) -> tuple[dict[str, PyJWK], bool]:
        """The current keys, and whether they were fetched from the network just now."""
        if self._clock() - self._last_failure < self._interval:
            return self._known, False
        cache = self._client.jwk_set_cache
        fetching = refresh or cache is None or cache.get() is None
        try:
            found = self._client.get_signing_keys(refresh=refresh)
        except (jwt.PyJWTError, ValueError, OSError) as exc:
            self._last_failure = self._clock()
            log.warning("Access JWKS fetch from %s failed (%s); %s", self._client.uri, exc,
                        f"using {len(self._known)} cached key(s)" if self._known else "no keys cached: refusing requests")
            return self._known, False
        # Only RSA keys can verify RS256; anything else in the set is ignored rather than trusted.
        self._known = {k.key_id: k for k in found if k.key_id and k.key_type == "RSA"}
        self._ever_fetched = True
        return self._known, fetching


class AccessMiddleware:
    """Pure ASGI middleware: refuse (403 JSON) any request without a valid Cloudflare Access JWT.

    The verified identity is put in `scope["state"]["access_identity"]` (Starlette:
    `request.state.access_identity`). Only `GET /healthz` and `GET /_edgehost/durable` from a loopback
    client that did not come through the tunnel (no `Cf-Connecting-Ip`) are let through without a
    token, for local probes.
    """

    def __init__(
        self,
        app: ASGIApp,
        team_domain: str,
        audience: str | Sequence[str],
        *,
        jwks_url: str | None = None,
        leeway: float = DEFAULT_LEEWAY,
        jwk_client: PyJWKClient | None = None,
        refetch_interval: float = DEFAULT_REFETCH_INTERVAL,
    ):
        self.app = app
        self.team_domain = access_team_domain(team_domain)
        self.issuer = f"https://{self.team_domain}"
        self.audience = (audience,) if isinstance(audience, str) else tuple(audience)
        if not self.audience or not all(isinstance(a, str) and a for a in self.audience):
            raise BadInput("Access audience: at least one application AUD tag is needed")
        self.leeway = leeway
        client = jwk_client or PyJWKClient(
            jwks_url or certs_url_for(self.team_domain),
            cache_jwk_set=True,
            lifespan=DEFAULT_JWKS_LIFESPAN,
            timeout=DEFAULT_JWKS_TIMEOUT,
        )
        self.keys = SigningKeys(client, refetch_interval)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or _exempt(scope):
            await self.app(scope, receive, send)
            return
        try:
            token = _token(scope)
            identity = await run_in_threadpool(self.verify, token)
        except AccessDenied as exc:
            await _refuse(scope, receive, send, str(exc))
            return
        except Exception:  # fail closed: a bug or an odd key set must never let a request through, nor 500
            log.exception("Access verification failed unexpectedly")
            await _refuse(scope, receive, send, "could not verify the Access token")
            return
        scope.setdefault("state", {})["access_identity"] = identity
        await self.app(scope, receive, send)

    def verify(self, token: str) -> AccessIdentity:
        """Verify one Access JWT and return who it names; raise AccessDenied otherwise (blocking: may fetch keys)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AccessDenied("malformed Access token") from None
        # Checked before any key lookup: `none` and HMAC tokens never get near a key.
        if header.get("alg") != ALGORITHM:
            raise AccessDenied(f"Access token must be signed with {ALGORITHM}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AccessDenied("Access token has no key id")
        key = self.keys.get(kid)
        if key is None:
            if not self.keys.ever_fetched:
                raise AccessDenied("Access signing keys are unavailable")
            raise AccessDenied("Access token is signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[ALGORITHM],
                audience=list(self.audience),
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AccessDenied("Access token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AccessDenied("Access token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise AccessDenied("Access token is for another application") from None
        except jwt.InvalidIssuerError:
            raise AccessDenied("Access token was not issued by this team") from None
        except jwt.InvalidSignatureError:
            raise AccessDenied("Access token signature is invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AccessDenied(f"Access token lacks the '{exc.claim}' claim") from None
        except jwt.PyJWTError:
            raise AccessDenied("invalid Access token") from None
        return _identity(claims)


def _identity(claims: dict[str, Any]) -> AccessIdentity:
    email, common_name = claims.get("email"), claims.get("common_name")
    sub = claims.get("sub") if isinstance(claims.get("sub"), str) else ""
    frozen = MappingProxyType(dict(claims))
    if isinstance(email, str) and email:
        return AccessIdentity("user", email, None, sub, frozen)
    if isinstance(common_name, str) and common_name:
        return AccessIdentity("service", None, common_name, sub, frozen)
    raise AccessDenied("Access token names neither a user nor a service token")


def _headers(scope: Scope, name: bytes) -> list[bytes]:
    return [v for k, v in scope.get("headers", ()) if k.lower() == name]


def _token(scope: Scope) -> str:
    values = _headers(scope, HEADER.encode())
    if not values:
        raise AccessDenied("missing Cf-Access-Jwt-Assertion header")
    if len(values) > 1:
        raise AccessDenied("more than one Cf-Access-Jwt-Assertion header")
    try:
        return values[0].decode("ascii").strip()
    except UnicodeDecodeError:
        raise AccessDenied("malformed Access token") from None


def _exempt(scope: Scope) -> bool:
    return (
        scope["type"] == "http"
        and scope.get("method") == "GET"
        and scope.get("path") in (HEALTH_PATH, DURABLE_PATH)
        and is_loopback(scope.get("client"))
        # cloudflared connects from loopback too; the edge's header marks tunnelled requests.
        and not _headers(scope, b"cf-connecting-ip")
    )


def is_loopback(client: Any) -> bool:
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except (ValueError, TypeError, IndexError):
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


async def _refuse(scope: Scope, receive: Receive, send: Send, reason: str) -> None:
    if scope["type"] == "websocket":
        # Closing before accept makes the server answer the handshake with 403.
        await send({"type": "websocket.close", "code": 1008, "reason": reason})
        return
    response = JSONResponse({"error": reason}, status_code=403, headers={"Cache-Control": "no-store"})
    await response(scope, receive, send)


@dataclass(frozen=True)
class AccessConfig:
    """The origin's Access settings: which team and which application(s) it trusts."""

    team_domain: str
    audience: tuple[str, ...]
    jwks_url: str | None = None

    def wrap(self, app: ASGIApp, **kwargs: Any) -> AccessMiddleware:
        """Put `app` behind AccessMiddleware with these settings."""
        return AccessMiddleware(app, self.team_domain, self.audience, jwks_url=self.jwks_url, **kwargs)


def access_config(access: AccessSettings) -> AccessConfig | None:
    """The Access check the settings ask for (access.team + access.aud); None when neither is set.

    access.jwks_url (EDGEHOST_ACCESS_JWKS_URL) overrides where keys come from (tests, staging); it must
    be https, or http on a loopback address.
    """
    team, aud = access.team.strip(), tuple(a.strip() for a in access.aud if a.strip())
    if not team and not aud:
        return None
    if not team or not aud:
        # Half a config would silently run the portal unguarded: refuse instead.
        missing = "EDGEHOST_ACCESS_TEAM (access.team)" if not team else "EDGEHOST_ACCESS_AUD (access.aud)"
        raise BadInput(f"{missing} is not set: Access needs both the team name and the application's AUD tag")
    jwks_url = access.jwks_url.strip() or None
    if jwks_url is not None:
        _check_jwks_url(jwks_url)
    return AccessConfig(access_team_domain(team), aud, jwks_url)


def _check_jwks_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and is_loopback((parts.hostname or "",)):
        return
    raise BadInput(f"EDGEHOST_ACCESS_JWKS_URL {url!r}: must be https (or http on 127.0.0.1 for tests)")
