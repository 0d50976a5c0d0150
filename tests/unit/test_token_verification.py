"""What a valid access token is, for every verifier (kit.tokens): one algorithm, a known key, the
right issuer and audience, every required claim, and times that hold within a small leeway."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prognetwork.kit.tokens import (
    ALGORITHM,
    LEEWAY_SECONDS,
    REQUIRED_CLAIMS,
    InvalidToken,
    UnknownKey,
    verify,
)
from prognetwork.users.keys import generate_pem, load_key
from tests.helpers.tokens import AUDIENCE, ISSUER

KEY = load_key(generate_pem())
# The public key as verifiers hold it: read from the published key set (JWKS).
PUBLISHED = {KEY.kid: jwt.PyJWK(KEY.jwk, algorithm=ALGORITHM).key}
WITHIN_LEEWAY = LEEWAY_SECONDS // 2
BEYOND_LEEWAY = LEEWAY_SECONDS * 6


class KeyLookups:
    """The verifier's key lookup, remembering which key ids it was asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, kid: str) -> Any | None:
        self.asked.append(kid)
        return PUBLISHED.get(kid)


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    valid = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(uuid.uuid4()), "iat": now, "nbf": now, "exp": now + 600,
             "jti": uuid.uuid4().hex, "role": "user"}
    return {name: value for name, value in {**valid, **changes}.items() if value is not None}


def signed(payload: dict[str, Any] | None = None, *, private=KEY.private, headers: dict | None = None) -> str:
    return jwt.encode(claims() if payload is None else payload, private, algorithm=ALGORITHM,
                      headers={"kid": KEY.kid} if headers is None else headers)


def verified(token: str, lookups: KeyLookups | None = None) -> dict[str, Any]:
    return verify(token, lookups or KeyLookups(), ISSUER, AUDIENCE)


def refusal(token: str) -> str:
    with pytest.raises(InvalidToken) as refused:
        verified(token)
    return str(refused.value)


def test_a_token_signed_by_a_published_key_with_the_right_claims_is_accepted():
    payload = claims(tid=str(uuid.uuid4()))
    assert verified(signed(payload)) == payload


@pytest.mark.parametrize("token", [
    jwt.encode(claims(), "a shared secret long enough for HMAC-SHA256", algorithm="HS256", headers={"kid": KEY.kid}),
    # HS256 keyed with the public key, the classic algorithm-confusion forgery.
    jwt.encode(claims(), KEY.jwk["x"], algorithm="HS256", headers={"kid": KEY.kid}),
    jwt.encode(claims(), None, algorithm="none", headers={"kid": KEY.kid}),
], ids=["HS256", "HS256 keyed with the public key", "none"])
def test_any_other_algorithm_is_refused_before_a_key_is_chosen(token):
    lookups = KeyLookups()
    with pytest.raises(InvalidToken, match="algorithm not accepted") as refused:
        verified(token, lookups)
    assert not isinstance(refused.value, UnknownKey)  # nothing to refresh the key set for
    assert lookups.asked == []


def with_header(token: str, header: dict[str, Any]) -> str:
    """`token` with its header replaced by one no library would write (its signature left as it was)."""
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return ".".join([encoded, *token.split(".")[1:]])


@pytest.mark.parametrize("header", [
    {"alg": ALGORITHM},
    {"alg": ALGORITHM, "kid": ""},
    {"alg": ALGORITHM, "kid": 7},
    {"alg": ALGORITHM, "kid": {"url": "https://attacker.example/key"}},
], ids=["absent", "empty", "a number", "an object"])
def test_a_token_without_a_key_id_string_is_refused_before_any_key_lookup(header):
    lookups = KeyLookups()
    with pytest.raises(InvalidToken) as refused:
        verified(with_header(signed(), header), lookups)
    assert not isinstance(refused.value, UnknownKey)
    assert lookups.asked == []


def test_a_token_without_a_key_id_is_told_so():
    assert refusal(signed(headers={})) == "token has no key id"


def test_a_token_of_an_unknown_key_says_so_so_the_key_set_can_be_refreshed():
    other = load_key(generate_pem())
    lookups = KeyLookups()
    with pytest.raises(UnknownKey):
        verified(signed(private=other.private, headers={"kid": other.kid}), lookups)
    assert lookups.asked == [other.kid]


def test_a_signature_by_another_key_under_a_known_key_id_is_refused():
    assert "rejected" in refusal(signed(private=Ed25519PrivateKey.generate()))


@pytest.mark.parametrize("token", ["", "not-a-token", "a.b.c", "eyJhbGciOiJFZERTQSJ9"])
def test_a_malformed_token_is_refused(token):
    assert refusal(token) == "malformed token"


def test_a_token_expired_within_the_leeway_is_still_accepted():
    now = int(time.time())
    assert verified(signed(claims(exp=now - WITHIN_LEEWAY)))["exp"] == now - WITHIN_LEEWAY


def test_a_token_expired_beyond_the_leeway_is_refused_as_expired():
    assert refusal(signed(claims(exp=int(time.time()) - BEYOND_LEEWAY))) == "token expired"


def test_a_token_valid_from_just_ahead_of_this_clock_is_accepted_but_not_one_from_much_later():
    now = int(time.time())
    assert verified(signed(claims(nbf=now + WITHIN_LEEWAY)))
    assert "not yet valid" in refusal(signed(claims(nbf=now + BEYOND_LEEWAY)))


@pytest.mark.parametrize(("claim", "value"), [
    ("iss", "https://someone-else.example"),
    ("aud", "another-audience"),
    ("aud", ["another-audience", "and-another"]),
])
def test_a_token_for_another_issuer_or_audience_is_refused(claim, value):
    assert "rejected" in refusal(signed(claims(**{claim: value})))


@pytest.mark.parametrize("claim", REQUIRED_CLAIMS)
def test_a_token_missing_a_required_claim_is_refused(claim):
    payload = claims()
    del payload[claim]
    assert claim in refusal(signed(payload))
