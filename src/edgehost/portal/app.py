"""The reference portal: a small ASGI app over the honestcam databases."""

from __future__ import annotations

from typing import Any, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from edgehost.engine import layout
from edgehost.portal.access import access_config
from edgehost.errors import BadInput
from edgehost.settings import Settings
from edgehost.portal import store


def _errors(fn: Callable[..., Any]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> JSONResponse:
        try:
            return await fn(request)
        except store.NotFound as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except store.AlreadyExists as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except BadInput as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    return endpoint


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadInput("request body must be JSON") from None
    if not isinstance(body, dict):
        raise BadInput("request body must be a JSON object")
    return body


class ReadOnly:
    """Answer every write with 503 and the reason (another machine is the writer); reads go on."""

    def __init__(self, app: Any, reason: str):
        self.app, self.reason = app, reason

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            response = JSONResponse({"error": f"read-only: {self.reason}", "read_only": True}, status_code=503,
                                    headers={"Retry-After": "60"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(settings: Settings):
    """Build the portal for one data dir. Every handler's SQLite work runs in the thread pool."""

    async def healthz(request: Request) -> JSONResponse:
        report = await run_in_threadpool(store.health, settings)
        return JSONResponse(report, status_code=200 if report["ok"] else 503)

    async def properties(request: Request) -> JSONResponse:
        if request.method == "POST":
            body = await _json_body(request)
            slug = body.get("slug")
            await run_in_threadpool(store.create_property, settings, slug)
            return JSONResponse({"slug": slug}, status_code=201)
        return JSONResponse({"properties": layout.local_slugs(settings)})

    async def events(request: Request) -> JSONResponse:
        slug = request.path_params["slug"]
        if request.method == "POST":
            body = await _json_body(request)
            event = await run_in_threadpool(
                store.add_event, settings, slug, body.get("kind"), body.get("payload"), body.get("actor"),
                body.get("occurred_at"),
            )
            return JSONResponse(event.as_dict(), status_code=201)
        try:
            after = int(request.query_params.get("after", 0))
            limit = min(int(request.query_params.get("limit", 1000)), 10000)
        except ValueError:
            raise BadInput("'after' and 'limit' must be integers") from None
        found = await run_in_threadpool(store.list_events, settings, slug, after, limit)
        return JSONResponse({"slug": slug, "events": [e.as_dict() for e in found]})

    async def users(request: Request) -> JSONResponse:
        return JSONResponse({"users": await run_in_threadpool(store.list_users, settings)})

    async def user(request: Request) -> JSONResponse:
        user_id = request.path_params["user_id"]
        if request.method == "PUT":
            body = await _json_body(request)
            saved = await run_in_threadpool(store.put_user, settings, user_id, body.get("email"), body.get("display_name"))
            return JSONResponse(saved)
        return JSONResponse(await run_in_threadpool(store.get_user, settings, user_id))

    async def progress_list(request: Request) -> JSONResponse:
        return JSONResponse({"progress": await run_in_threadpool(store.list_progress, settings)})

    async def progress(request: Request) -> JSONResponse:
        user_id = request.path_params["user_id"]
        if request.method == "PUT":
            body = await _json_body(request)
            if "progress" not in body:
                raise BadInput("body needs a 'progress' value")
            return JSONResponse(await run_in_threadpool(store.put_progress, settings, user_id, body["progress"]))
        return JSONResponse(await run_in_threadpool(store.get_progress, settings, user_id))

    routes = [
        Route("/healthz", _errors(healthz)),
        Route("/properties", _errors(properties), methods=["GET", "POST"]),
        Route("/properties/{slug}/events", _errors(events), methods=["GET", "POST"]),
        Route("/study/users", _errors(users)),
        Route("/study/users/{user_id}", _errors(user), methods=["GET", "PUT"]),
        Route("/study/progress", _errors(progress_list)),
        Route("/study/progress/{user_id}", _errors(progress), methods=["GET", "PUT"]),
    ]
    app = Starlette(routes=routes)
    read_only = settings.environ.get("EDGEHOST_PORTAL_READ_ONLY", "")
    if read_only:
        app = ReadOnly(app, read_only)
    # Cloudflare Access at the origin: with EDGEHOST_ACCESS_TEAM/AUD set, every request needs a valid
    # Access JWT (only GET /healthz from loopback is exempt), so nothing reaching the port around
    # the tunnel gets in.
    access = access_config(settings.access)
    return access.wrap(app) if access else app


def serve(settings: Settings) -> None:
    """Prepare the databases and serve the portal until SIGTERM/SIGINT."""
    import uvicorn

    if not settings.global_db.exists():
        # Never create a global DB the replica holds: restore it, or create it only if the replica has none.
        from edgehost.ops.provision import prepare_data_dir

        prepare_data_dir(settings, lambda line: print(line, flush=True))
    store.migrate_all(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.portal.host,
        port=settings.portal.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
