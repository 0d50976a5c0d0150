"""RFC 9457 problem details for every error a service returns."""

from __future__ import annotations

import sysconfig
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_BASE = "https://prognetwork.dev/problems/"
# A database or cache that cannot be reached is an outage to retry, not a bug: 503.
OUTAGES = (RedisConnectionError, RedisTimeoutError, OperationalError, InterfaceError, OSError)
RETRY_AFTER_SECONDS = "5"
# SQLSTATE class 22 (data exception): a value the database cannot take, e.g. NUL in text.
DATA_EXCEPTION_CLASS = "22"
# SQLSTATEs that say the server cannot serve now, not that the statement is wrong: connection
# exceptions (class 08), shutting down or starting up (57P01-57P03), out of connections (53300).
# The driver raises them as plain database errors, not as lost connections.
OUTAGE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")
LOGGED_FRAMES = 8
_LIBRARIES = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")})
_OURS = str(Path(__file__).resolve().parent.parent)
MEDIA_TYPE = "application/problem+json"
log = structlog.get_logger("prognetwork.errors")


class Problem(Exception):
    """Raise anywhere in a request to answer with problem+json."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.title = title
        self.headers = headers
        self.extensions = extensions


@dataclass(frozen=True, slots=True)
class ProblemType:
    """One kind of problem in a catalogue: its status, its `type` slug and title, declared once.

    Calling it makes the `Problem` to raise: `raise INVALID_TOKEN("the token expired.")`.
    Routes list the types they may answer with in `responses=problem_responses(...)`, so the
    OpenAPI document (and /docs) shows every problem a client must handle.
    """

    status: int
    kind: str
    title: str

    def __call__(self, detail: str, *, headers: dict[str, str] | None = None, **extensions: Any) -> Problem:
        return Problem(self.status, detail, kind=self.kind, title=self.title, headers=headers, **extensions)


# The kinds every service shares (each service's own are in its problems.py).
INVALID_REQUEST = ProblemType(422, "invalid-request", "The request is invalid")
MALFORMED_REQUEST = ProblemType(400, "invalid-request", "The request is malformed")
UNAUTHENTICATED = ProblemType(401, "unauthenticated", "An access token is required")
INVALID_TOKEN = ProblemType(401, "invalid-token", "The access token is not valid")
PLATFORM_ROLE_REQUIRED = ProblemType(403, "forbidden", "Your platform role does not allow this")
BODY_TOO_LARGE = ProblemType(413, "body-too-large", "The request body is too large")
DEPENDENCY_UNAVAILABLE = ProblemType(503, "dependency-unavailable", "A dependency is unavailable")
REVOCATION_CHECK_UNAVAILABLE = ProblemType(503, "revocation-check-unavailable", "Sessions cannot be checked")
NOT_READY = ProblemType(503, "not-ready", "Not ready")
INVALID_VALUE = ProblemType(400, "invalid-value", "A value cannot be stored")
AUTHENTICATED = (UNAUTHENTICATED, INVALID_TOKEN, REVOCATION_CHECK_UNAVAILABLE)


def problem_responses(*types: ProblemType) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route: each status with the problem kinds it may carry."""
    by_status: dict[int, list[ProblemType]] = {}
    for problem_type in (*types, INVALID_REQUEST, DEPENDENCY_UNAVAILABLE):
        by_status.setdefault(problem_type.status, []).append(problem_type)
    return {
        status: {
            "description": "; ".join(dict.fromkeys(f"{t.title} ({t.kind})" for t in kinds)),
            "content": {MEDIA_TYPE: {"schema": PROBLEM_SCHEMA}},
        }
        for status, kinds in sorted(by_status.items())
    }


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}


def problem_response(
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    title: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + kind if kind else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _validation_detail(errors: list[dict[str, Any]]) -> tuple[int, str, list[dict[str, Any]]]:
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "The request body is not valid JSON.", []
    fields = [
        {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "message": e.get("msg", "")}
        for e in errors
    ]
    summary = "; ".join(f"{f['field'] or 'body'}: {f['message']}" for f in fields[:5])
    return 422, f"The request is invalid: {summary}", fields


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            exc.status,
            exc.detail,
            kind=exc.kind,
            title=exc.title,
            instance=request.url.path,
            headers=exc.headers,
            **exc.extensions,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No resource at {request.url.path}."
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}."
        return problem_response(
            exc.status_code, detail, instance=request.url.path, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, detail, fields = _validation_detail(list(exc.errors()))
        if fields:
            return problem_response(
                status, detail, kind="invalid-request", instance=request.url.path, errors=fields
            )
        return problem_response(status, detail, kind="invalid-request", instance=request.url.path)

    async def _outage(request: Request, exc: Exception) -> JSONResponse:
        log.warning("dependency unavailable", path=request.url.path, error=type(exc).__name__)
        return problem_response(
            503,
            "A service this request depends on is unavailable; nothing was changed. Retry shortly.",
            kind="dependency-unavailable",
            instance=request.url.path,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )

    for outage in OUTAGES:
        app.add_exception_handler(outage, _outage)

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        # Not log.exception: the driver's message and the exceptions chained to it quote the
        # offending values ("invalid input for query argument $1: '...'", "Key (email)=(...)
        # already exists"), which hide_parameters cannot reach. The SQLSTATE, the statement
        # (placeholders only) and the frames that led there are enough to find the cause.
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None) or "")
        frames = traceback.extract_tb(exc.__traceback__)
        # The application's frames say where; the driver's own frames below them do not.
        ours = [f for f in frames if f.filename.startswith(_OURS) or not f.filename.startswith(_LIBRARIES)]
        where = [f"{f.filename}:{f.lineno} in {f.name}" for f in ours or frames]
        fields = dict(
            path=request.url.path,
            sqlstate=sqlstate,
            error=type(exc.orig).__name__,
            statement=(exc.statement or "")[:500],
            stack=where[-LOGGED_FRAMES:],
        )
        # A connection lost under the statement (the server restarted or ended it) is an outage
        # whatever the driver made of it: often no SQLSTATE at all, when the connection broke
        # mid-answer. SQLAlchemy has already invalidated the pool's older connections.
        if exc.connection_invalidated or sqlstate.startswith(OUTAGE_SQLSTATES):
            return await _outage(request, exc)
        if sqlstate.startswith(DATA_EXCEPTION_CLASS):
            # Input that got past validation at the edge: the caller's to fix, not a server fault.
            log.warning("database rejected a value", **fields)
            return problem_response(
                400,
                "A value in this request cannot be stored; nothing was changed.",
                kind="invalid-value",
                instance=request.url.path,
            )
        log.error("unhandled database error", **fields)
        return problem_response(
            500, "An unexpected error occurred; it has been logged.", instance=request.url.path
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", path=request.url.path)
        return problem_response(
            500, "An unexpected error occurred; it has been logged.", instance=request.url.path
        )
