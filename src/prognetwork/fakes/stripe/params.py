"""Stripe's request parameters and error answers: the bracketed form encoding the SDK sends
(`line_items[0][price]=…`), the checks Stripe makes on it, list pagination and `expand`.

Every failure is a `StripeError`, answered in Stripe's own shape and status so that the SDK raises
the exception it would raise against Stripe (400/404 → InvalidRequestError or IdempotencyError,
401 → AuthenticationError, other statuses → APIError).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Obj = dict[str, Any]

LIST_LIMIT_DEFAULT = 10
LIST_LIMIT_MAX = 100
EXPAND_DEPTH_MAX = 4
METADATA_KEYS_MAX = 50
METADATA_KEY_CHARS_MAX = 40
METADATA_VALUE_CHARS_MAX = 500

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")


class StripeError(Exception):
    """An error answer: `{"error": {type, code, message, param}}` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> Obj:
        error: Obj = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


def missing(what: str, object_id: str, param: str | None = None) -> StripeError:
    """Stripe's answer for an id it does not know: 404 on the object's own path, 400 (with the
    parameter named) when the id was a parameter of another request."""
    return StripeError(
        400 if param else 404, f"No such {what}: '{object_id}'", code="resource_missing", param=param
    )


def parse_form(pairs: Iterable[tuple[str, str]]) -> Obj:
    """Nested parameters from bracketed keys: `a[b]=1` → {"a": {"b": "1"}}, `a[]=x` appends to a
    list. Indexed arrays (`a[0][c]`) stay dicts keyed "0", "1"…; `as_list` reads them in order, so
    metadata whose keys happen to be digits stays a mapping."""
    root: Obj = {}
    for key, value in pairs:
        match = _KEY.match(key)
        if not match:
            raise StripeError(
                400, f"Invalid parameter name: {key}", code="parameter_invalid_string", param=key
            )
        *parents, leaf = [match.group(1), *_SEGMENT.findall(match.group(2))]
        if "" in parents:
            raise StripeError(400, f"Invalid array: {key}", param=key)
        node: Any = root
        for depth, segment in enumerate(parents):
            appends_here = leaf == "" and depth == len(parents) - 1
            child = node.setdefault(segment, [] if appends_here else {})
            if not isinstance(child, list if appends_here else dict):
                raise StripeError(400, f"Invalid parameter: {key}", param=key)
            node = child
        if leaf == "":
            node.append(value)
        elif isinstance(node.get(leaf), dict | list):
            raise StripeError(400, f"Invalid hash: {key}", param=key)
        else:
            node[leaf] = value
    return root


def check_known(params: Mapping[str, Any], allowed: Iterable[str], prefix: str = "") -> None:
    """Stripe refuses parameters it does not know, naming the first one."""
    known = {*allowed, "expand"}
    for name in params:
        if name not in known:
            param = f"{prefix}[{name}]" if prefix else name
            raise StripeError(
                400, f"Received unknown parameter: {param}", code="parameter_unknown", param=param
            )


def as_list(value: Any, param: str) -> list[Any]:
    """An array parameter, sent as `a[0]=…&a[1]=…` or `a[]=…`, in index order."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and all(key.isdigit() for key in value):
        return [value[key] for key in sorted(value, key=int)]
    raise StripeError(400, f"Invalid array: {param}", param=param)


def as_dict(value: Any, param: str) -> Obj:
    if isinstance(value, dict):
        return value
    raise StripeError(400, f"Invalid object: {param}", param=param)


def as_str(value: Any, param: str) -> str:
    if isinstance(value, str):
        return value
    raise StripeError(400, f"Invalid string: {param}", param=param)


def as_int(value: Any, param: str, minimum: int | None = None, maximum: int | None = None) -> int:
    try:
        number = int(as_str(value, param))
    except ValueError:
        raise StripeError(
            400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param
        ) from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise StripeError(400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param)
    return number


def as_bool(value: Any, param: str) -> bool:
    if value in ("true", "false"):
        return value == "true"
    raise StripeError(400, f"Invalid boolean: {value}", param=param)


def required_str(params: Mapping[str, Any], name: str) -> str:
    if params.get(name) in (None, ""):
        raise StripeError(400, f"Missing required param: {name}.", code="parameter_missing", param=name)
    return as_str(params[name], name)


def optional_str(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    return None if value in (None, "") else as_str(value, name)


def metadata(value: Any, param: str = "metadata") -> dict[str, str]:
    """Validated metadata as sent; an empty string (`metadata=`) means "none"."""
    if value == "":
        return {}
    given = as_dict(value, param)
    if len(given) > METADATA_KEYS_MAX:
        raise StripeError(400, f"Invalid {param}: at most {METADATA_KEYS_MAX} keys.", param=param)
    for key, item in given.items():
        if (
            not isinstance(item, str)
            or len(key) > METADATA_KEY_CHARS_MAX
            or len(item) > METADATA_VALUE_CHARS_MAX
        ):
            raise StripeError(400, f"Invalid {param}[{key}].", param=f"{param}[{key}]")
    return dict(given)


def merged_metadata(current: Mapping[str, str], update: Any) -> dict[str, str]:
    """Stripe merges metadata on update: a key set to "" is removed, `metadata=` clears all."""
    if update == "":
        return {}
    merged = dict(current)
    for key, value in metadata(update).items():
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def page(items: list[Obj], params: Mapping[str, Any], url: str) -> Obj:
    """A list object over `items` (newest first), honouring limit, starting_after, ending_before."""
    limit = as_int(params["limit"], "limit", 1, LIST_LIMIT_MAX) if "limit" in params else LIST_LIMIT_DEFAULT
    ids = [item["id"] for item in items]
    if after := optional_str(params, "starting_after"):
        if after not in ids:
            raise missing("object", after, "starting_after")
        chosen = items[ids.index(after) + 1 :]
        data, has_more = chosen[:limit], len(chosen) > limit
    elif before := optional_str(params, "ending_before"):
        if before not in ids:
            raise missing("object", before, "ending_before")
        chosen = items[: ids.index(before)]
        data, has_more = chosen[-limit:], len(chosen) > limit
    else:
        data, has_more = items[:limit], len(items) > limit
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def expand(obj: Obj, paths: Iterable[str], find: Callable[[str], Obj | None]) -> Obj:
    """A copy of `obj` with the ids at each dotted path (`latest_invoice`, `data.customer`) replaced
    by the objects they name; a path that is not there is refused, as Stripe does."""
    result = copy.deepcopy(obj)
    for path in paths:
        segments = path.split(".")
        if len(segments) > EXPAND_DEPTH_MAX:
            raise StripeError(
                400, f"You cannot expand more than {EXPAND_DEPTH_MAX} levels of a property.", param="expand"
            )
        _expand_at(result, segments, path, find)
    return result


def _expand_at(node: Any, segments: list[str], path: str, find: Callable[[str], Obj | None]) -> None:
    if isinstance(node, list):
        for item in node:
            _expand_at(item, segments, path, find)
        return
    if not isinstance(node, dict) or segments[0] not in node:
        raise StripeError(400, f"This property cannot be expanded ({path}).", param="expand")
    key, rest = segments[0], segments[1:]
    if isinstance(node[key], str) and (found := find(node[key])) is not None:
        node[key] = copy.deepcopy(found)
    if rest and node[key] is not None:
        _expand_at(node[key], rest, path, find)
