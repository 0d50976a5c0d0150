"""Rendering pages: the Jinja2 templates (autoescaped), their filters, and the page response.

Pages are never cached (they show live state and personal data) and carry no inline script or
style: the Content-Security-Policy (security.py) would refuse them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import ChainableUndefined, Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse

from prognetwork.admin.sessions import Session

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
NAVIGATION = [
    ("Users", "/users"),
    ("Tenants", "/tenants"),
    ("Events", "/events"),
    ("Emails", "/emails"),
    ("Audit log", "/audit"),
    ("Health", "/status"),  # /health is the ops port's liveness probe
]
NO_STORE = {"Cache-Control": "no-store"}


def when(value: object) -> str:
    """An ISO timestamp (or epoch seconds) as `2025-01-31 14:05:09 UTC`; blank when missing."""
    if value in (None, ""):
        return ""
    try:
        if isinstance(value, int | float):
            moment = datetime.fromtimestamp(value, UTC)
        else:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return str(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def compact_json(value: object, limit: int = 300) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def query(base: str, **params: object) -> str:
    """`base` with the non-empty `params` as its query string."""
    kept = {k: str(v) for k, v in params.items() if v not in (None, "")}
    return f"{base}?{urlencode(kept)}" if kept else base


def sparkline(points: Sequence[float], label: str, width: int = 120, height: int = 28) -> Markup:
    """A small server-rendered SVG line of `points` (oldest first), described by `label`."""
    values = [p for p in points if math.isfinite(p)]
    if len(values) < 2:
        return Markup("")  # nothing to draw yet: the value beside it says what there is
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = (width - 2) / (len(values) - 1)
    coords = " ".join(
        f"{1 + i * step:.1f},{height - 2 - (v - low) / span * (height - 4):.1f}" for i, v in enumerate(values)
    )
    # Markup.format escapes every argument: the label is text, the rest are numbers.
    return Markup(
        '<svg class="spark" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{label}">'
        '<title>{label}</title><polyline points="{coords}" fill="none"/></svg>'
    ).format(w=width, h=height, label=label, coords=coords)


def create_environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        # API answers may lack optional fields: a missing one renders empty, never a 500.
        undefined=ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        enable_async=False,
    )
    env.filters["when"] = when
    env.filters["compact_json"] = compact_json
    env.globals["query"] = query
    env.globals["navigation"] = NAVIGATION
    env.globals["spark"] = sparkline
    return env


class Views:
    def __init__(self) -> None:
        self.env = create_environment()

    def render(
        self,
        request: Request,
        template: str,
        context: dict[str, Any] | None = None,
        *,
        session: Session | None = None,
        notices: Sequence[str] = (),
        status: int = 200,
    ) -> HTMLResponse:
        page = self.env.get_template(template).render(
            path=request.url.path,
            session=session,
            notices=list(notices),
            **(context or {}),
        )
        return HTMLResponse(page, status_code=status, headers=NO_STORE)
