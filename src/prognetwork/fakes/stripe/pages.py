"""The pages Stripe hosts, reduced to what a person (or a test with an HTTP client) clicks.

- `/checkout/{id}`: the plan and amount, and a form posting `outcome=paid` or `outcome=declined`
  back to the same URL; paid answers 303 to `success_url` (`{CHECKOUT_SESSION_ID}` filled in, as
  Stripe does), declined 303 to `cancel_url`; paying a completed session is a 409.
- `/portal/{id}`: the customer's subscriptions, each with a button to cancel at the end of the
  period (or to keep it), and a link back to `return_url`.
- `/invoices/{id}` (`hosted_invoice_url`): the invoice, with a button paying it while it is open.

A 409 or 404 is HTML for a browser (Accept: text/html) and a Stripe-shaped JSON error otherwise.
"""

from __future__ import annotations

from html import escape
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from prognetwork.fakes.stripe.params import Obj
from prognetwork.fakes.stripe.state import PAGE, AlreadyCompleted, Store

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#1a1f36}"
    "button{font-size:1rem;padding:.6rem 1.2rem;margin:.3rem .3rem 0 0;cursor:pointer}"
    ".note{color:#697386;font-size:.9rem}"
)


def _html(title: str, body: str, status: int = 200) -> HTMLResponse:
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>{body}"
        "<p class='note'>Stripe development fake: no real payment is taken.</p></body></html>"
    )
    return HTMLResponse(page, status)


def _refusal(request: Request, status: int, message: str, code: str) -> Response:
    if "text/html" in request.headers.get("accept", ""):
        return _html("Cannot do that", f"<p>{escape(message)}</p>", status)
    return JSONResponse(
        {"error": {"type": "invalid_request_error", "code": code, "message": message}}, status
    )


async def _form(request: Request) -> dict[str, str]:
    # Parsed here: Starlette's own form parser needs python-multipart, which the platform does not ship.
    return dict(parse_qsl((await request.body()).decode(errors="replace")))


def _money(amount: int, currency: str) -> str:
    return f"{amount / 100:,.2f} {currency.upper()}"


def _plan(store: Store, price: Obj, quantity: int) -> str:
    product = store.products.get(price["product"], {})
    interval = str((price.get("recurring") or {}).get("interval", ""))
    amount = _money(int(price["unit_amount"]) * quantity, price["currency"])
    return f"<li>{escape(str(product.get('name', price['product'])))} × {quantity}: {amount} / {escape(interval)}</li>"


def routes(store: Store) -> list[Route]:
    async def checkout(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        session = store.checkout_sessions.get(session_id)
        if session is None:
            return _refusal(request, 404, f"No such checkout.session: '{session_id}'", "resource_missing")
        if request.method == "GET":
            return _checkout_page(store, session)
        outcome = (await _form(request)).get("outcome")
        if outcome not in ("paid", "declined"):
            return _refusal(request, 400, "outcome must be 'paid' or 'declined'.", "parameter_invalid")
        try:
            store.complete_checkout(session, paid=outcome == "paid")
        except AlreadyCompleted:
            return _refusal(
                request, 409, f"Checkout session {session_id} is already completed.", "already_completed"
            )
        target = session["success_url"] if outcome == "paid" else session["cancel_url"]
        if target is None:
            return _html("Payment complete" if outcome == "paid" else "Payment declined", "")
        return RedirectResponse(target.replace("{CHECKOUT_SESSION_ID}", session_id), 303)

    async def portal(request: Request) -> Response:
        session = store.portal_sessions.get(request.path_params["session_id"])
        if session is None:
            return _refusal(request, 404, "No such billing portal session.", "resource_missing")
        if request.method == "POST":
            form = await _form(request)
            sub = store.subscriptions.get(form.get("subscription", ""))
            if sub is None or sub["customer"] != session["customer"]:
                return _refusal(request, 404, "No such subscription for this customer.", "resource_missing")
            keep = form.get("action") == "keep"
            store.update_subscription(sub, PAGE, cancel_at_period_end=not keep, metadata=None)
            return RedirectResponse(str(request.url), 303)
        return _portal_page(store, session)

    async def invoice(request: Request) -> Response:
        found = store.invoices.get(request.path_params["invoice_id"])
        if found is None:
            return _refusal(request, 404, "No such invoice.", "resource_missing")
        if request.method == "POST":
            try:
                store.pay_invoice(found)
            except AlreadyCompleted:
                return _refusal(
                    request, 409, f"Invoice {found['id']} is already {found['status']}.", "invoice_not_open"
                )
            return RedirectResponse(str(request.url), 303)
        return _invoice_page(found)

    return [
        Route("/checkout/{session_id}", checkout, methods=["GET", "POST"]),
        Route("/portal/{session_id}", portal, methods=["GET", "POST"]),
        Route("/invoices/{invoice_id}", invoice, methods=["GET", "POST"]),
    ]


def _checkout_page(store: Store, session: Obj) -> HTMLResponse:
    pending = store.pending_checkouts[session["id"]]
    plans = "".join(_plan(store, price, quantity) for price, quantity in pending.lines)
    total = _money(session["amount_total"], session["currency"])
    if session["status"] == "complete":
        return _html("Already paid", f"<ul>{plans}</ul><p>This checkout session is complete.</p>")
    form = (
        "<form method='post'>"
        "<button name='outcome' value='paid'>Pay (card succeeds)</button>"
        "<button name='outcome' value='declined'>Decline (card fails)</button></form>"
    )
    return _html("Subscribe", f"<ul>{plans}</ul><p>Total today: <strong>{total}</strong></p>{form}")


def _portal_page(store: Store, session: Obj) -> HTMLResponse:
    rows = []
    for sub in store.newest_first(store.subscriptions):
        if sub["customer"] != session["customer"] or sub["status"] == "canceled":
            continue
        names = ", ".join(
            store.products.get(i["price"]["product"], {}).get("name", i["price"]["id"])
            for i in sub["items"]["data"]
        )
        action, label = (
            ("keep", "Keep subscription")
            if sub["cancel_at_period_end"]
            else ("cancel", "Cancel at period end")
        )
        ending = " (ends at the end of this period)" if sub["cancel_at_period_end"] else ""
        rows.append(
            f"<li>{escape(names)}: {escape(sub['status'])}{ending}"
            f"<form method='post'><input type='hidden' name='subscription' value='{escape(sub['id'])}'>"
            f"<button name='action' value='{action}'>{label}</button></form></li>"
        )
    back = f"<p><a href='{escape(session['return_url'])}'>Return</a></p>" if session["return_url"] else ""
    listing = f"<ul>{''.join(rows)}</ul>" if rows else "<p>No current subscriptions.</p>"
    return _html("Your subscriptions", listing + back)


def _invoice_page(invoice: Obj) -> HTMLResponse:
    amount = _money(invoice["amount_due"], invoice["currency"])
    pay = (
        "<form method='post'><button>Pay this invoice</button></form>" if invoice["status"] == "open" else ""
    )
    body = f"<p>Invoice {escape(invoice['number'])}: {amount}, {escape(invoice['status'])}</p>{pay}"
    return _html("Invoice", body)
