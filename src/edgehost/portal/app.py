"""The reference portal: a small ASGI app over the honestcam databases.

Every request body is read under a size limit, parsed as strict JSON (no NaN or Infinity, no lone
surrogates, bounded depth) and validated by a typed model before anything is written; every answer,
errors included, is JSON. A full disk answers 503 with Retry-After instead of a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import sqlite3
from datetime import datetime
from typing import Annotated, Any, Callable

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictStr, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from edgehost.engine import layout
from edgehost.engine.schema import MigrationFailed, SchemaGate
from edgehost.errors import BadInput
from edgehost.portal import DURABLE_PATH, store
from edgehost.portal.access import access_config, is_loopback
from edgehost.portal.durable import DurableAcks, NotReplicated
from edgehost.settings import Settings

log = logging.getLogger("edgehost.portal")

MAX_DEPTH = 32  # JSON nesting a request may carry (payloads are small documents)
MAX_ID = 2**63 - 1  # SQLite's largest rowid
PAGE_MAX = 10000


class TooLarge(BadInput):
    pass


class Answer(JSONResponse):
    """JSON that any client can parse: ASCII-escaped (a stored lone surrogate cannot break an answer), no NaN."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _rfc3339(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("must be an RFC 3339 timestamp like 2026-11-23T10:00:00Z") from None
    if when.tzinfo is None or "T" not in value.upper():
        raise ValueError("must be an RFC 3339 timestamp with a time zone (Z or +hh:mm)")
    return value


class EventIn(_Body):
    kind: Annotated[StrictStr, Field(min_length=1, max_length=100)]
    payload: JsonValue = None
    actor: Annotated[StrictStr, Field(max_length=200)] | None = None
    occurred_at: Annotated[StrictStr, Field(max_length=40)] | None = None

    @field_validator("occurred_at")
    @classmethod
    def _occurred(cls, value: str | None) -> str | None:
        return _rfc3339(value)


class PropertyIn(_Body):
    slug: StrictStr


class UserIn(_Body):
    email: Annotated[StrictStr, Field(max_length=320)] | None = None
    display_name: Annotated[StrictStr, Field(max_length=200)] | None = None


class ProgressIn(_Body):
    progress: JsonValue


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadInput(f"request body: {text[:20]} is too large for a double (it would read back as Infinity)")
    return value


def _reject_constant(name: str) -> Any:
    raise BadInput(f"request body: {name} is not JSON")


def _check_text(value: str, what: str) -> None:
    """Text SQLite stores and reads back whole: valid Unicode, and no NUL (SQLite's text functions stop there)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput(f"{what} holds a lone surrogate (not valid Unicode)") from None
    if "\x00" in value:
        raise BadInput(f"{what} holds a NUL character")


def _check_tree(value: Any, depth: int = 0) -> None:
    """Refuse what SQLite would store but no JSON answer could carry back: lone surrogates, deep nesting."""
    if depth > MAX_DEPTH:
        raise BadInput(f"request body: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        _check_text(value, "request body: a string")
    elif isinstance(value, float) and not math.isfinite(value):
        raise BadInput("request body: a number too large for a double (it would read back as Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_tree(key, depth + 1)
            _check_tree(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_tree(item, depth + 1)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (never held whole when too large)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body passes the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _body(request: Request, model: type[_Body], limit: int) -> Any:
    raw = await _read_body(request, limit)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("request body must be UTF-8 JSON") from None
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        raise BadInput(f"request body: nested deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite)
    except (ValueError, RecursionError):
        raise BadInput("request body must be JSON") from None
    if not isinstance(data, dict):
        raise BadInput("request body must be a JSON object")
    _check_tree(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise BadInput(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None


def _depth(text: str) -> int:
    """The deepest bracket nesting outside strings, without building the object (json.loads would recurse)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def _path_text(request: Request, name: str) -> str:
    value = request.path_params[name]
    _check_text(value, name)
    if "\ufffd" in value:
        raise BadInput(f"{name} is not valid UTF-8 once percent-decoded")
    return value


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 19 or not low <= int(raw) <= high:
        raise BadInput(f"'{name}' must be a whole number from {low} to {high}, got {raw[:40]!r}")
    return int(raw)


def _error(status: int, message: str, **headers: str) -> Answer:
    return Answer({"error": message}, status_code=status, headers=headers or None)


def _errors(fn: Callable[..., Any]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Answer:
        try:
            return await fn(request)
        except store.NotFound as exc:
            return _error(404, str(exc))
        except store.AlreadyExists as exc:
            return _error(409, str(exc))
        except sqlite3.IntegrityError as exc:
            # The schema's own checks refused the value (nothing was written): bad input, not a crash.
            return _error(400, f"the database refused the value: {exc}")
        except TooLarge as exc:
            return _error(413, str(exc))
        except MigrationFailed as exc:
            log.error("%s", exc)
            return _error(503, f"this database could not be brought to the current schema: {exc}")
        except BadInput as exc:
            return _error(400, str(exc))
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code == sqlite3.SQLITE_FULL:
                log.error("database or disk is full: %s %s", request.method, request.url.path)
                return _error(503, "storage is full: the write was not saved; try again later", **{"Retry-After": "60"})
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return _error(503, "the database is busy; try again", **{"Retry-After": "5"})
            raise

    return endpoint


class ReadOnly:
    """Answer every write with 503 and the reason (another machine is the writer); reads go on.

    `reason` empty: writes pass (a standby promoted in place, see `become_writable`)."""

    def __init__(self, app: Any, reason: str):
        self.app, self.reason = app, reason

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.reason and scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            response = Answer({"error": f"read-only: {self.reason}", "read_only": True}, status_code=503,
                                    headers={"Retry-After": "60"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Answer:
    assert isinstance(exc, HTTPException)
    return Answer({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Answer:
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return _error(500, "internal error (logged)")


def _not_replicated(exc: NotReplicated, **written: Any) -> Answer:
    """503 for a durable write that is committed here but not confirmed in the replica: never a silent success."""
    return Answer({"error": f"stored on this machine but not yet replicated off it ({exc}); it is not lost here, "
                            "and a retry would store it again (docs/durable.md)",
                   "stored_locally": True, **written}, status_code=503, headers={"Retry-After": "5"})


def create_app(settings: Settings):
    """Build the portal for one data dir. Every handler's SQLite work runs in the thread pool."""
    read_only = settings.environ.get("EDGEHOST_PORTAL_READ_ONLY", "")
    conns = store.Connections(readonly=bool(read_only), on_open=SchemaGate(settings))
    gate: ReadOnly | None = None  # wraps `app` (built below) when read-only
    limit = settings.portal.max_body_bytes
    durable = settings.durable
    acks = DurableAcks(settings.litestream_socket, durable.timeout_seconds, durable.batch_ms)

    def db(fn: Callable[..., Any], *args: Any) -> Any:
        return run_in_threadpool(fn, settings, *args, conns=conns)

    def read_only_now() -> bool:
        return bool(gate is not None and gate.reason)

    async def healthz(request: Request) -> Answer:
        report = await db(store.health)
        report["read_only"] = read_only_now()
        return Answer(report, status_code=200 if report["ok"] else 503)

    async def properties(request: Request) -> Answer:
        if request.method == "POST":
            body = await _body(request, PropertyIn, limit)
            await run_in_threadpool(store.create_property, settings, body.slug)
            return Answer({"slug": body.slug}, status_code=201)
        return Answer({"properties": layout.local_slugs(settings)})

    async def events(request: Request) -> Answer:
        slug = request.path_params["slug"]
        if request.method == "POST":
            body = await _body(request, EventIn, limit)
            event = await db(store.add_event, slug, body.kind, body.payload, body.actor, body.occurred_at)
            if durable.property_dbs:
                try:
                    await acks.confirm(slug, store.property_path(settings, slug))
                except NotReplicated as exc:
                    return _not_replicated(exc, id=event.id)
            return Answer(event.as_dict(), status_code=201)
        after = _int_param(request, "after", 0, 0, MAX_ID)
        page = _int_param(request, "limit", 1000, 1, PAGE_MAX)
        found = await db(store.list_events, slug, after, page)
        return Answer({"slug": slug, "events": [e.as_dict() for e in found]})

    async def global_write(saved: dict[str, Any], user_id: str) -> Answer:
        if durable.global_db:
            try:
                await acks.confirm("global", settings.global_db)
            except NotReplicated as exc:
                return _not_replicated(exc, user_id=user_id)
        return Answer(saved)

    async def durable_stats(request: Request) -> Answer:
        """Durable-ack latency and timeouts per database, for the supervisor's poll (loopback only)."""
        if not is_loopback(request.client) or "cf-connecting-ip" in request.headers:
            return _error(403, "durable-ack stats are served to this machine only")
        return Answer({"property_dbs": durable.property_dbs, "global_db": durable.global_db,
                       "timeout_seconds": durable.timeout_seconds, "databases": acks.stats(),
                       "read_only": read_only_now()})

    async def users(request: Request) -> Answer:
        return Answer({"users": await db(store.list_users)})

    async def user(request: Request) -> Answer:
        user_id = _path_text(request, "user_id")
        if request.method == "PUT":
            body = await _body(request, UserIn, limit)
            saved = await db(store.put_user, user_id, body.email, body.display_name)
            return await global_write(saved, user_id)
        return Answer(await db(store.get_user, user_id))

    async def progress_list(request: Request) -> Answer:
        return Answer({"progress": await db(store.list_progress)})

    async def progress(request: Request) -> Answer:
        user_id = _path_text(request, "user_id")
        if request.method == "PUT":
            body = await _body(request, ProgressIn, limit)
            saved = await db(store.put_progress, user_id, body.progress)
            return await global_write(saved, user_id)
        return Answer(await db(store.get_progress, user_id))

    def become_writable() -> None:
        """A standby promoted in place (SIGUSR1 from the supervisor, once litestream replicates): take
        writes from now on (each database's schema is brought up to date as it is first opened)."""
        conns.promoted, conns.readonly = True, False
        assert gate is not None
        gate.reason = ""
        log.warning("promoted: the portal takes writes now")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if gate is not None:
            loop = asyncio.get_running_loop()

            def on_usr1() -> None:
                task = loop.create_task(run_in_threadpool(become_writable))
                task.add_done_callback(lambda t: t.cancelled() or t.exception() is None or
                                       log.error("could not become writable: %s", t.exception()))

            loop.add_signal_handler(signal.SIGUSR1, on_usr1)
        yield
        acks.close()
        conns.close()

    routes = [
        Route("/healthz", _errors(healthz)),
        Route(DURABLE_PATH, durable_stats),
        Route("/properties", _errors(properties), methods=["GET", "POST"]),
        Route("/properties/{slug}/events", _errors(events), methods=["GET", "POST"]),
        Route("/study/users", _errors(users)),
        Route("/study/users/{user_id}", _errors(user), methods=["GET", "PUT"]),
        Route("/study/progress", _errors(progress_list)),
        Route("/study/progress/{user_id}", _errors(progress), methods=["GET", "PUT"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _server_error})
    if read_only:
        gate = ReadOnly(app, read_only)
    app.state.connections = conns
    app.state.durable = acks
    outer: Any = app
    if gate is not None:
        outer = gate
    # Cloudflare Access at the origin: with access.team/aud set, every request needs a valid
    # Access JWT (only GET /healthz from loopback is exempt), so nothing reaching the port around
    # the tunnel gets in.
    access = access_config(settings.access)
    return access.wrap(outer) if access else outer


def serve(settings: Settings) -> None:
    """Prepare the databases and serve the portal until SIGTERM/SIGINT."""
    import uvicorn

    if settings.environ.get("EDGEHOST_PORTAL_READ_ONLY"):
        pass  # a fenced primary or a standby: nothing here may write, not even a migration
    else:
        if not settings.global_db.exists():
            # Never create a global DB the replica holds: restore it, or create it only if the replica has none.
            from edgehost.ops.provision import prepare_data_dir

            prepare_data_dir(settings, lambda line: print(line, flush=True))
        # No pass over every database here: each is migrated as the portal first opens it (SchemaGate).
    uvicorn.run(
        create_app(settings),
        host=settings.portal.host,
        port=settings.portal.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
