"""Reading the console's forms: URL-encoded bodies, at most a few small fields.

Only `application/x-www-form-urlencoded` is read (every form here is one); any other body reads
as an empty form, which then fails its CSRF check. The body's size is bounded by the kit's
middleware (MAX_BODY_BYTES) before it gets here.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

MAX_FIELDS = 20
URLENCODED = "application/x-www-form-urlencoded"


async def read_form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != URLENCODED:
        return {}
    body = await request.body()
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {name: value for name, value in pairs if "\x00" not in value}
