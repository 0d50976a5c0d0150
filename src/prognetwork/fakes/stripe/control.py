"""The fake's own endpoints under `/_fake` (no API key): what tests and developers use to see the
webhooks sent and to produce the cases real Stripe makes hard to reach.

- `GET /_fake/health`, `GET /_fake/events` (oldest first, each with `delivery_status` and
  `endpoint_status`), `GET /_fake/deliveries` (every attempt).
- `POST /_fake/events/{id}/resend`, `POST /_fake/webhooks/pause`, `POST /_fake/webhooks/resume`
  with `{"order": "fifo" | "reverse"}`.
- `POST /_fake/subscriptions/{id}/fail-payment`, `POST /_fake/subscriptions/{id}/status` with
  `{"status": "active" | "past_due" | "unpaid" | "canceled"}`.
- `POST /_fake/outage` with `{"status": 503}`, `DELETE /_fake/outage`.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from prognetwork.fakes.stripe.api import Api
from prognetwork.fakes.stripe.params import StripeError
from prognetwork.fakes.stripe.state import Store
from prognetwork.fakes.stripe.webhooks import Dispatcher

SETTABLE_STATUSES = ("active", "past_due", "unpaid", "canceled")


def _error(status: int, message: str, code: str = "parameter_invalid") -> JSONResponse:
    return JSONResponse(
        {"error": {"type": "invalid_request_error", "code": code, "message": message}}, status
    )


async def _json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise StripeError(400, "The body must be JSON.") from None
    if not isinstance(body, dict):
        raise StripeError(400, "The body must be a JSON object.")
    return body


def routes(store: Store, dispatcher: Dispatcher, api: Api) -> list[Route]:
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def events(request: Request) -> Response:
        listed = [
            {
                **event,
                "delivery_status": dispatcher.status(event["id"]),
                "endpoint_status": dispatcher.endpoint_status.get(event["id"], {}),
            }
            for event in store.events.values()
        ]
        return JSONResponse({"data": listed})

    async def deliveries(request: Request) -> Response:
        return JSONResponse({"data": dispatcher.attempts})

    async def resend(request: Request) -> Response:
        event_id = request.path_params["event_id"]
        try:
            dispatcher.resend(event_id)
        except KeyError:
            return _error(404, f"No such event: '{event_id}'", "resource_missing")
        return JSONResponse({"resent": event_id})

    async def pause(request: Request) -> Response:
        dispatcher.pause()
        return JSONResponse({"paused": True})

    async def resume(request: Request) -> Response:
        order = (await _json(request)).get("order", "fifo")
        if order not in ("fifo", "reverse"):
            return _error(400, "order must be 'fifo' or 'reverse'.")
        released = len(dispatcher.held)
        dispatcher.resume(reverse=order == "reverse")
        return JSONResponse({"paused": False, "released": released, "order": order})

    async def fail_payment(request: Request) -> Response:
        sub = store.get(store.subscriptions, "subscription", request.path_params["subscription_id"])
        store.fail_renewal(sub)
        return JSONResponse(sub)

    async def set_status(request: Request) -> Response:
        sub = store.get(store.subscriptions, "subscription", request.path_params["subscription_id"])
        status = (await _json(request)).get("status")
        if status not in SETTABLE_STATUSES:
            return _error(400, f"status must be one of: {', '.join(SETTABLE_STATUSES)}.")
        store.set_status(sub, status)
        return JSONResponse(sub)

    async def outage(request: Request) -> Response:
        if request.method == "DELETE":
            api.outage_status = None
            return JSONResponse({"outage": None})
        status = (await _json(request)).get("status", 503)
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
            return _error(400, "status must be an HTTP error status (400-599).")
        api.outage_status = status
        return JSONResponse({"outage": status})

    return [
        Route("/_fake/health", health),
        Route("/_fake/events", events),
        Route("/_fake/deliveries", deliveries),
        Route("/_fake/events/{event_id}/resend", resend, methods=["POST"]),
        Route("/_fake/webhooks/pause", pause, methods=["POST"]),
        Route("/_fake/webhooks/resume", resume, methods=["POST"]),
        Route("/_fake/subscriptions/{subscription_id}/fail-payment", fail_payment, methods=["POST"]),
        Route("/_fake/subscriptions/{subscription_id}/status", set_status, methods=["POST"]),
        Route("/_fake/outage", outage, methods=["POST", "DELETE"]),
    ]
