"""The platform's API as the console reaches it: through the API gateway, and only there.

Every answer that is not a success becomes an `ApiError` carrying a message a person can act on:
the problem's own `detail` for what the caller can fix (the services write those for people),
and a plain sentence for outages (unreachable, 502, 503, 504) and throttling, where the detail
would only name internals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import structlog

PROBLEM_BASE = "https://prognetwork.dev/problems/"
UNREACHABLE = 0  # the status of an ApiError when no answer came at all


class ApiError(Exception):
    def __init__(self, status: int, detail: str, kind: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind

    @property
    def unavailable(self) -> bool:
        """The service did not answer (as opposed to answering no)."""
        return self.status == UNREACHABLE or self.status in (502, 503, 504)

    @property
    def message(self) -> str:
        if self.status == UNREACHABLE:
            return "The platform's API gateway cannot be reached right now. Try again shortly."
        if self.status in (502, 504):
            return "The service behind this page is not answering right now. Try again shortly."
        if self.status == 503:
            return "The service behind this page is temporarily unavailable. Try again shortly."
        if self.status == 429:
            return "Too many requests right now. Wait a moment and try again."
        if self.status == 403:
            return f"Not allowed: {self.detail}" if self.detail else "Your role does not allow this."
        return self.detail or f"The request failed (HTTP {self.status})."


def headers_for(token: str | None) -> dict[str, str]:
    """The operator's token, and this request's id: the platform's logs and audit records of what
    a console request caused carry the same id as the console's own access log."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    context = structlog.contextvars.get_contextvars()
    request_id = context.get("request_id")
    if isinstance(request_id, str):
        headers["X-Request-ID"] = request_id
    client_ip = context.get("client_ip")
    if isinstance(client_ip, str):
        # The person's address (as this server determined it): the gateway's rate limits, the login
        # throttle and the audit log see them, not the console, where it trusts the console's network.
        headers["X-Forwarded-For"] = client_ip
    return headers


class Gateway:
    """JSON requests to the gateway (`API_GATEWAY_URL`), and the event stream."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, timeout_seconds: float) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        params: Mapping[str, str | int] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        """The JSON answer (None for an empty one), or ApiError."""
        query = {k: str(v) for k, v in (params or {}).items() if v is not None and v != ""}
        try:
            async with self.http.request(
                method,
                self.base_url + path,
                params=query,
                json=body,
                headers=headers_for(token),
                timeout=self.timeout,
                allow_redirects=False,
            ) as response:
                if response.status >= 400:
                    raise await _error(response)
                if response.status == 204 or response.content_length == 0:
                    return None
                return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # ValueError: a body that is not JSON (the API always answers JSON: something else did).
            raise ApiError(UNREACHABLE, f"no answer from the gateway ({type(exc).__name__})") from None

    async def open_stream(
        self, path: str, token: str, params: Mapping[str, str], last_event_id: str | None
    ) -> aiohttp.ClientResponse:
        """An open SSE response (the caller closes it), or ApiError."""
        headers = {**headers_for(token), "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        try:
            response = await self.http.get(
                self.base_url + path,
                params=dict(params),
                headers=headers,
                # Streams last: only the connection is bounded; the gateway sends keep-alives.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout.total, sock_read=None),
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(UNREACHABLE, f"no answer from the gateway ({type(exc).__name__})") from None
        if response.status != 200:
            try:
                raise await _error(response)
            finally:
                response.close()
        return response


async def _error(response: aiohttp.ClientResponse) -> ApiError:
    detail = ""
    kind = None
    try:
        problem = await response.json(content_type=None)
    except (aiohttp.ClientError, ValueError):
        problem = None
    if isinstance(problem, dict):
        detail = str(problem.get("detail") or problem.get("title") or "")
        type_ = str(problem.get("type") or "")
        kind = type_.removeprefix(PROBLEM_BASE) if type_.startswith(PROBLEM_BASE) else None
    return ApiError(response.status, detail, kind)
