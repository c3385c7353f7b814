"""The HTTP API over one run (FastAPI; OpenAPI docs at ``/docs``).

Every route but ``/health`` needs ``Authorization: Bearer <token>`` (401 otherwise); ``/docs`` and
``/openapi.json`` describe the API and hold no run data. Request bodies are limited in size (413);
keys are 64 lowercase hex digits (the SHA-256 of an image's bytes, or a labeled dataset's sample
id) and only images of the run's pool are served, read from under the data root.
"""

from __future__ import annotations

from typing import Annotated, Any, Awaitable, Callable

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from osal_ray.annotation.labels import LabelErrors
from osal_ray.config import ExperimentConfig
from osal_ray.errors import MAX_SHOWN, CorruptFile, InputError
from osal_ray.annotation.secret import image_signature_ok, webhook_token
from osal_ray.service.auth import bearer_matches, token_digest
from osal_ray.service.controller import Conflict, NotFound, RunController

MAX_BODY_BYTES = 1 << 20  # a label batch of ~10,000 rows
MAX_LABELS_PER_REQUEST = 10_000
IMAGES_PREFIX = "/images/"
KEY_PATTERN = r"^(?:[0-9a-f]{64}|[0-9]{1,18})$"  # an image pool's SHA-256 key, or a labeled dataset's sample id


class LabelIn(BaseModel):
    """One label: the image's key and a known class name, the unknown label, or ``skip``."""

    key: str = Field(min_length=1, max_length=64)
    label: str = Field(min_length=1, max_length=200)


class LabelBatch(BaseModel):
    """Labels with the round they answer (a client that saw an older round is refused with 409)."""

    round: Annotated[int, Field(strict=True, ge=1)] | None = None  # strict: true is no round number
    labels: list[LabelIn] = Field(max_length=MAX_LABELS_PER_REQUEST)


BareLabels = Annotated[list[LabelIn], Field(max_length=MAX_LABELS_PER_REQUEST)]


def build_api(controller: RunController, token_sha256: str, max_body_bytes: int = MAX_BODY_BYTES,
              origins: frozenset[str] = frozenset()) -> FastAPI:
    """The FastAPI application serving ``controller``; callers authenticate with the token whose
    SHA-256 is ``token_sha256`` (the service never holds the token itself). Pages of ``origins``
    may load its images (``image_origins``)."""
    app = FastAPI(title="osal_ray", version=_version(), docs_url=None, redoc_url=None,
                  description="Open-set active learning as a service: which images to label next, and their labels back.")
    _offline_docs(app)
    bearer = HTTPBearer(auto_error=False, description="the service's API token (OSAL_RAY_API_TOKEN)")

    def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        header = f"{credentials.scheme} {credentials.credentials}" if credentials else None
        if not bearer_matches(header, token_sha256):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    _limit_body_size(app, max_body_bytes)
    app.add_middleware(ImageCors, origins=origins)
    _map_errors(app)

    @app.get("/health", tags=["service"])
    def health() -> dict[str, str]:
        """Liveness (no authentication)."""
        return {"status": "ok"}

    @app.get("/status", tags=["run"], dependencies=[Depends(authorized)])
    def status() -> dict[str, Any]:
        """The run's state (``training``, ``scoring``, ``selecting``, ``waiting_for_labels``, ``finished``,
        ``failed`` with ``error``, ...), the open round's label counts, per-phase progress, trajectories."""
        return controller.status()

    @app.get("/queries", tags=["run"], dependencies=[Depends(authorized)])
    def queries(request: Request) -> dict[str, Any]:
        """The open round's batch: ``rank, key, path, score, strategy, seed, label`` (staged so far), ``image_url``."""
        return controller.queries(str(request.base_url))

    @app.get("/images/{key}", tags=["run"], response_class=Response,
             responses={200: {"content": {"image/*": {}}}, 404: {"description": "not in the run's pool"}})
    def image(request: Request, key: str = Path(pattern=KEY_PATTERN),
              size: int | None = Query(None, ge=8, le=1024, description="a PNG thumbnail whose longer side is this many pixels"),
              sig: str | None = Query(None, max_length=64, description="a signed image URL's signature (Label Studio tasks)")) -> Response:
        """An image's original bytes (or a thumbnail). Needs the bearer token, or the signature of a signed URL."""
        if not bearer_matches(request.headers.get("authorization"), token_sha256):
            if not image_signature_ok(controller.output_dir, key, sig):
                raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
            if not controller.was_queried(key):  # a signed URL shows a queried image, never a labeled or test one
                raise HTTPException(404, f"no queried image with key {key}")
        found = controller.image(key, size)
        return Response(found.data, media_type=found.media_type, headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/labels", tags=["run"], dependencies=[Depends(authorized)])
    def post_labels(body: BareLabels | LabelBatch) -> dict[str, Any]:
        """Stage labels for the open round: ``[{key, label}]`` or ``{round, labels: [{key, label}]}``.

        The same checks as ``python -m osal_ray.label``: 422 with every bad row and nothing staged on any
        error. Staged labels are on disk when the call returns; once every query has a label the next
        round starts in the background (``GET /status``)."""
        batch = body if isinstance(body, LabelBatch) else LabelBatch(labels=body)
        return controller.stage([(item.key, item.label) for item in batch.labels], "http POST /labels", batch.round)

    @app.post("/pool/rescan", tags=["run"], status_code=202, dependencies=[Depends(authorized)])
    def rescan() -> dict[str, Any]:
        """Read the pool folder again: images added since join the pool (for the next round's query)."""
        return controller.rescan()

    @app.post("/webhooks/label-studio", tags=["label studio"])
    async def label_studio_webhook(request: Request) -> dict[str, Any]:
        """Label Studio's annotation events (it sends the run's webhook token, or the API token)."""
        header = request.headers.get("authorization")
        if not (bearer_matches(header, token_digest(webhook_token(controller.output_dir))) or bearer_matches(header, token_sha256)):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        try:
            payload = await request.json()
        except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
            raise HTTPException(422, "the body is not JSON (or is nested too deeply)") from None
        if not isinstance(payload, dict):
            raise HTTPException(422, "the body is not a JSON object")
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(controller.stage_webhook, payload)

    return app


def _map_errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Where and what, never the input itself: it may be huge, or NaN (which JSON cannot carry back).
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:MAX_SHOWN], "type": e.get("type")}
                  for e in exc.errors()[:20]]
        return JSONResponse({"detail": errors}, 422)

    @app.exception_handler(LabelErrors)
    def label_errors(request: Request, exc: LabelErrors) -> JSONResponse:
        rows = [{"row": row, "key": key, "error": text} for row, key, text in exc.problems]
        return JSONResponse({"detail": rows, "message": "no label was staged: fix the rows named and send them again"}, 422)

    @app.exception_handler(CorruptFile)
    def corrupt_file(request: Request, exc: CorruptFile) -> JSONResponse:
        # The run's own files on disk, not the request, are wrong: the service cannot go on until they are fixed.
        return JSONResponse({"detail": str(exc), "file": exc.field}, 503)

    @app.exception_handler(InputError)
    def input_error(request: Request, exc: InputError) -> JSONResponse:
        status = 409 if exc.field in ("round", "OUTPUT_DIR") else 422
        return JSONResponse({"detail": str(exc)}, status)

    @app.exception_handler(Conflict)
    def conflict(request: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 409)

    @app.exception_handler(NotFound)
    def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 404)


DOCS_ASSETS = "/docs/assets"


def _offline_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI 5 (it reads FastAPI's OpenAPI 3.1) from the ``fastapi-offline`` package's
    assets, served by the service itself (no CDN: the page works on a machine without internet). The
    page and its assets hold no run data."""
    from importlib.resources import files

    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount(DOCS_ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png")


def image_origins(config: ExperimentConfig) -> frozenset[str]:
    """The web origins whose pages may load the service's images: ``label_studio.cors_origins``, else
    the origin of ``label_studio.url`` (none without Label Studio)."""
    from osal_ray.annotation.label_studio import web_origin

    studio = config.label_studio
    if studio.cors_origins is not None:
        return frozenset(studio.cors_origins)
    origin = web_origin(studio.url) if studio.url else None
    return frozenset({origin} if origin else ())


class ImageCors:
    """ASGI middleware: CORS for ``/images/`` only, for the allowed origins only.

    Label Studio's labeling view loads a task's image with a cross-origin request from its own page,
    which a browser lets through only with ``Access-Control-Allow-Origin``; the signed URL stays the
    key. Every other route sends no CORS header, so no other page can read the API's answers.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], origins: frozenset[str]) -> None:
        self.app = app
        self.origins = origins

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(IMAGES_PREFIX):
            await self.app(scope, receive, send)
            return
        origin = dict(scope.get("headers") or []).get(b"origin", b"").decode("latin-1")
        allowed = origin in self.origins
        if scope["method"] == "OPTIONS":  # a preflight: answered here, never reaches the routes
            headers = {"Vary": "Origin"}
            if allowed:
                headers.update({"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": "GET, HEAD",
                                "Access-Control-Allow-Headers": "Accept, Range", "Access-Control-Max-Age": "600"})
            await Response(status_code=204 if allowed else 403, headers=headers)(scope, receive, send)
            return

        async def send_with_cors(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"vary"]
                headers.append((b"vary", b"Origin"))
                if allowed:
                    headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)


def _limit_body_size(app: FastAPI, limit: int) -> None:
    """413 for a body over ``limit`` bytes, whether it declares its length or streams it."""
    app.add_middleware(BodyLimit, limit=limit)


class BodyLimit:
    """ASGI middleware: reads a request body up to ``limit`` bytes before the app sees it; 413 past that."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._too_large(send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._too_large(send)
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Callable[[dict], Awaitable[None]]) -> None:
        await JSONResponse({"detail": f"request body over {self.limit} bytes"}, 413)({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}


def _version() -> str:
    import osal_ray

    return osal_ray.__version__

