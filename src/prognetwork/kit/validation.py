"""Input types that refuse what PostgreSQL, Redis or our encoders cannot take.

Request models and query/header parameters at the edge of each service use these, so that
bad input is a 422/400 problem instead of a database error (and a 500) deep in a handler:

- PostgreSQL `text` and `jsonb` reject NUL (U+0000) outright;
- a lone UTF-16 surrogate (a JSON `"\\ud800"` decodes to one) cannot be encoded as UTF-8, so
  asyncpg, redis-py and hashing all fail on it;
- jsonb has no NaN or Infinity, and Python's `json` module happily produces them;
- integer columns and parameters are signed 64-bit.

Types (all plain `Annotated` aliases, usable in pydantic models and FastAPI parameters):

`Text`           single-line text: no C0 control characters (so no tab or newline), no DEL.
`MultilineText`  like `Text` but tab, LF and CR are allowed.
`Secret`         a password: anything but NUL and lone surrogates (spaces, tabs and any
                 other character are the user's choice); length is bounded by the model.
`Email`          an `EmailStr` that is first checked to be single-line `Text`.
`TokenText`      an opaque token, key or identifier: printable ASCII (U+0021..U+007E) only.
`Int64`          an integer within PostgreSQL `bigint`; `NonNegativeInt64` for positions.
`JsonObject`     a JSON object whose numbers are finite, integers fit in 64 bits, keys and
                 strings have no NUL and no lone surrogate (other control characters are
                 ordinary JSON string content), and nesting is at most `MAX_JSON_DEPTH` deep.

`ascii_digits_int()` parses a position given as text (e.g. `Last-Event-ID`), where `int()`
and `str.isdigit()` would accept non-ASCII digits, signs, underscores and whitespace.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, EmailStr, Field

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# Deep enough for any real event, shallow enough that recursive code (ours, json, asyncpg's
# encoder, PostgreSQL's jsonb parser) never gets near its recursion limit.
MAX_JSON_DEPTH = 32

_C0_AND_DEL = re.compile(r"[\x00-\x1f\x7f]")
_C0_EXCEPT_WHITESPACE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]*")
_PRINTABLE_ASCII_AND_SPACE = re.compile(r"[\x20-\x7e]*")
_ASCII_DIGITS = re.compile(r"[0-9]+")


def _describe(char: str) -> str:
    names = {
        "\x00": "NUL",
        "\t": "tab",
        "\n": "line feed",
        "\r": "carriage return",
        "\x7f": "DEL",
        " ": "space",
    }
    if char in names:
        return f"{names[char]} (U+{ord(char):04X})"
    if char < " ":
        return f"control character (U+{ord(char):04X})"
    return f"U+{ord(char):04X}"


def _no_nul_or_surrogate(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL (U+0000)")
    if (m := _SURROGATE.search(value)) is not None:
        raise ValueError(f"must not contain a lone surrogate (U+{ord(m.group()):04X}); send valid UTF-8")
    return value


def check_text(value: str, *, multiline: bool = False) -> str:
    """Raise ValueError unless `value` is clean text; the message names the offending character."""
    _no_nul_or_surrogate(value)
    pattern = _C0_EXCEPT_WHITESPACE if multiline else _C0_AND_DEL
    if (m := pattern.search(value)) is not None:
        raise ValueError(f"must not contain {_describe(m.group())}")
    return value


# These run before pydantic's own string validation (BeforeValidator), which would otherwise
# refuse a lone surrogate first, with a message that does not say which character is wrong.
# Anything that is not a str is left for pydantic to refuse as usual.
def _single_line(value: Any) -> Any:
    return check_text(value) if isinstance(value, str) else value


def _multiline(value: Any) -> Any:
    return check_text(value, multiline=True) if isinstance(value, str) else value


def _secret(value: Any) -> Any:
    return _no_nul_or_surrogate(value) if isinstance(value, str) else value


def _token(value: Any) -> Any:
    return check_token(value) if isinstance(value, str) else value


def check_token(value: str, *, spaces: bool = False) -> str:
    """Raise ValueError unless `value` is printable ASCII (with inner spaces only if `spaces`)."""
    pattern, lowest = (_PRINTABLE_ASCII_AND_SPACE, " ") if spaces else (_PRINTABLE_ASCII, "\x21")
    if pattern.fullmatch(value) is None:
        bad = next(c for c in value if not lowest <= c <= "\x7e")
        raise ValueError(
            f"must be printable ASCII{'' if spaces else ' without spaces'}; found {_describe(bad)}"
        )
    return value


Text = Annotated[str, BeforeValidator(_single_line)]
MultilineText = Annotated[str, BeforeValidator(_multiline)]
Secret = Annotated[str, BeforeValidator(_secret)]
Email = Annotated[EmailStr, BeforeValidator(_single_line)]
TokenText = Annotated[str, BeforeValidator(_token)]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
NonNegativeInt64 = Annotated[int, Field(ge=0, le=INT64_MAX)]


def check_json(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Raise ValueError unless `value` (decoded JSON) can be stored as jsonb and re-encoded."""
    # Iterative, so a hostile depth cannot exhaust the stack before we count it.
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        node, depth, where = stack.pop()
        at = f" at {where}" if where else ""
        if isinstance(node, dict):
            if depth > max_depth:
                raise ValueError(f"nests deeper than {max_depth} levels{at}")
            for key, child in node.items():
                if not isinstance(key, str):
                    raise ValueError(f"has a non-string key{at}")
                try:
                    _no_nul_or_surrogate(key)
                except ValueError as exc:
                    raise ValueError(f"key {_safe(key)!r}{at} {exc}") from None
                stack.append((child, depth + 1, f"{where}.{_safe(key)}" if where else _safe(key)))
        elif isinstance(node, list):
            if depth > max_depth:
                raise ValueError(f"nests deeper than {max_depth} levels{at}")
            for i, child in enumerate(node):
                stack.append((child, depth + 1, f"{where}[{i}]"))
        elif isinstance(node, str):
            try:
                _no_nul_or_surrogate(node)
            except ValueError as exc:
                raise ValueError(f"string{at} {exc}") from None
        elif isinstance(node, bool) or node is None:
            pass
        elif isinstance(node, int):
            if not INT64_MIN <= node <= INT64_MAX:
                raise ValueError(f"integer{at} is outside the signed 64-bit range")
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise ValueError(f"number{at} must be finite (no NaN, Infinity or overflowing literals)")
        else:
            raise ValueError(f"contains a {type(node).__name__}{at}, which is not JSON")
    return value


def _safe(key: str) -> str:
    # Keys end up in the problem detail: short, printable ASCII (NUL shows as \x00).
    shown = key if len(key) <= 40 else key[:37] + "..."
    return shown.encode("ascii", "backslashreplace").decode("ascii").replace("\x00", "\\x00")


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    return check_json(value)


JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]


def ascii_digits_int(text: str, *, maximum: int = INT64_MAX) -> int | None:
    """The value of `text` if it is 1..19 ASCII digits no larger than `maximum`, else None."""
    if len(text) > 19 or _ASCII_DIGITS.fullmatch(text) is None:
        return None
    value = int(text)
    return value if value <= maximum else None
