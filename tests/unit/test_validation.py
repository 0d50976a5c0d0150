"""The shared input types: what each accepts, what it refuses, and what the error says."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from prognetwork.kit.validation import (
    INT64_MAX,
    INT64_MIN,
    MAX_JSON_DEPTH,
    Email,
    Int64,
    JsonObject,
    MultilineText,
    NonNegativeInt64,
    Secret,
    Text,
    TokenText,
    ascii_digits_int,
    check_json,
    check_token,
)


class Form(BaseModel):
    text: Text = "x"
    multiline: MultilineText = "x"
    secret: Secret = "x"
    email: Email = "a@example.com"
    token: TokenText = "x"
    payload: JsonObject = {}
    number: Int64 = 0
    position: NonNegativeInt64 = 0


def refusal(**fields: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        Form(**fields)
    (error,) = caught.value.errors()
    assert error["loc"][0] == next(iter(fields))
    return error["msg"]


@pytest.mark.parametrize("field", ["text", "multiline", "secret", "email", "token"])
def test_nul_is_refused_everywhere(field):
    value = "a@example.com\x00" if field == "email" else "ab\x00c"
    assert "NUL" in refusal(**{field: value})


@pytest.mark.parametrize("field", ["text", "multiline", "secret", "email"])
def test_a_lone_surrogate_is_refused(field):
    # What a JSON body "\ud800" decodes to: cannot be encoded as UTF-8 for PostgreSQL or Redis.
    value = json.loads('"a\\ud800b"')
    message = refusal(**{field: value + "@example.com" if field == "email" else value})
    assert "surrogate" in message and "U+D800" in message


def test_a_surrogate_pair_is_one_valid_character():
    assert Form(text=json.loads('"\\ud83d\\ude00"')).text == "\U0001F600"


def test_single_line_text_refuses_every_control_character_but_multiline_keeps_whitespace():
    for char in "\t\n\r\x01\x1b\x7f":
        assert "must not contain" in refusal(text=f"a{char}b")
    assert Form(multiline="line one\n\tline two\r\n").multiline == "line one\n\tline two\r\n"
    for char in "\x01\x08\x0b\x1b\x7f":
        assert "must not contain" in refusal(multiline=f"a{char}b")
    assert Form(text="Zoë Ñandú 東京 🙂").text == "Zoë Ñandú 東京 🙂"


def test_secrets_accept_any_other_character():
    assert Form(secret="tab\there ünïcode \x7f").secret == "tab\there ünïcode \x7f"


def test_tokens_are_printable_ascii_without_spaces():
    assert Form(token="AbC-_.~=+/0").token == "AbC-_.~=+/0"
    for bad in ("has space", "é", "tab\t", "\x7f"):
        assert "printable ASCII" in refusal(token=bad)


def test_keys_may_allow_inner_spaces():
    assert check_token("order 42 ~", spaces=True) == "order 42 ~"
    with pytest.raises(ValueError, match="printable ASCII; found tab"):
        check_token("a\tb", spaces=True)
    with pytest.raises(ValueError, match="without spaces; found space"):
        check_token("a b")


def test_email_is_still_checked_as_an_address():
    assert "email" in refusal(email="not-an-address").lower()


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_payload_numbers_must_be_finite(literal):
    payload = json.loads(f'{{"deep": {{"list": [1, {literal}]}}}}')
    message = refusal(payload=payload)
    assert "finite" in message and "deep.list[1]" in message


def test_payload_integers_fit_in_64_bits():
    assert Form(payload={"max": INT64_MAX, "min": INT64_MIN}).payload["max"] == INT64_MAX
    assert "64-bit" in refusal(payload={"n": INT64_MAX + 1})
    assert "64-bit" in refusal(payload={"n": [INT64_MIN - 1]})


def test_payload_strings_and_keys_are_clean():
    assert "NUL" in refusal(payload={"a": ["x\x00"]})
    assert "NUL" in refusal(payload={"k\x00": 1})
    assert "surrogate" in refusal(payload={json.loads('"\\udfff"'): 1})
    assert "surrogate" in refusal(payload={"a": {"b": json.loads('"\\ud800"')}})
    # Newlines and tabs are ordinary JSON string content.
    assert Form(payload={"a": "x\ny\t"}).payload == {"a": "x\ny\t"}


def test_payload_depth_is_bounded_without_recursion():
    def nested(depth: int) -> dict:
        value: Any = 1
        for _ in range(depth - 1):
            value = [value]
        return {"a": value}

    assert Form(payload=nested(MAX_JSON_DEPTH)).payload
    assert "deeper" in refusal(payload=nested(MAX_JSON_DEPTH + 1))
    # Far past Python's recursion limit: refused, not a RecursionError.
    with pytest.raises(ValueError, match="deeper"):
        check_json(nested(100_000))


def test_payload_must_be_an_object():
    refusal(payload=[1, 2])


def test_integers_are_bounded_to_bigint():
    assert Form(number=INT64_MIN, position=INT64_MAX).position == INT64_MAX
    refusal(number=INT64_MAX + 1)
    refusal(position=-1)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("0", 0), ("42", 42), (str(INT64_MAX), INT64_MAX), ("0009", 9),
        (str(INT64_MAX + 1), None), ("9" * 20, None), ("١٢", None), ("１２", None), ("+1", None),
        ("-1", None), ("1_000", None), (" 1", None), ("1\n", None), ("", None), ("²", None),
    ],
)
def test_ascii_digits_int(text, expected):
    assert ascii_digits_int(text) == expected
