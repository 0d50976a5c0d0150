"""The verified-token cache (kit.jwks): a token is checked in full once, then remembered until its
`exp` and no longer, in a bounded cache that a change of the key set empties, and that never
accepts a token the full check would refuse.

The key set is served over real HTTP by a local aiohttp server, as the user service serves it.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from prognetwork.kit.jwks import Jwks, VerifiedTokens
from prognetwork.kit.tokens import ALGORITHM, LEEWAY_SECONDS, InvalidToken, UnknownKey
from prognetwork.users.keys import generate_pem, load_key
from tests.helpers.tokens import AUDIENCE, ISSUER

KEY = load_key(generate_pem())
OTHER = load_key(generate_pem())


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    valid = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(uuid.uuid4()), "iat": now, "nbf": now, "exp": now + 600,
             "jti": uuid.uuid4().hex, "sid": uuid.uuid4().hex, "role": "user"}
    return {**valid, **changes}


def signed(payload: dict[str, Any] | None = None, key=KEY) -> str:
    return jwt.encode(payload or claims(), key.private, algorithm=ALGORITHM, headers={"kid": key.kid})


class Published:
    """The key set a local server publishes; tests change `keys` to rotate."""

    def __init__(self) -> None:
        self.keys = [KEY.jwk]

    async def handler(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": self.keys})


class CountingKeys(dict):
    """The verifier's key map, counting lookups: a cached token needs none."""

    lookups = 0

    def get(self, kid, default=None):
        self.lookups += 1
        return super().get(kid, default)


@pytest.fixture
async def published() -> AsyncIterator[tuple[Published, str]]:
    keys = Published()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", keys.handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield keys, str(server.make_url("/.well-known/jwks.json"))
    finally:
        await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def jwks(published, session) -> Jwks:
    _, url = published
    verifier = Jwks(url, ISSUER, AUDIENCE)
    await verifier.fetch(session)
    return verifier


def count_lookups(verifier: Jwks) -> CountingKeys:
    keys = CountingKeys(verifier.keys)
    verifier.keys = keys
    return keys


# --- remembered, until exp ---------------------------------------------------------------------


async def test_a_verified_token_is_accepted_again_without_checking_its_signature(jwks, session):
    token = signed()
    first = await jwks.verify(token, session)
    keys = count_lookups(jwks)
    assert await jwks.verify(token, session) == first
    assert keys.lookups == 0 and len(jwks.verified) == 1


def test_an_entry_serves_until_the_tokens_exp_and_not_a_moment_longer():
    cache = VerifiedTokens()
    exp = 2_000_000_000
    cache.put("token", {"exp": exp, "sub": "u"}, now=exp - 600)
    assert cache.get("token", now=exp - 0.001) == {"exp": exp, "sub": "u"}
    assert cache.get("token", now=exp) is None  # at exp the token is checked in full again
    assert len(cache) == 0


async def test_a_token_accepted_only_within_the_leeway_is_not_remembered(jwks, session):
    now = int(time.time())
    token = signed(claims(exp=now - LEEWAY_SECONDS // 2))
    assert (await jwks.verify(token, session))["exp"] == now - LEEWAY_SECONDS // 2
    assert len(jwks.verified) == 0  # so its next use is checked in full, and refused once the leeway is over


def test_a_token_without_a_numeric_exp_is_never_remembered():
    cache = VerifiedTokens()
    cache.put("token", {"exp": "soon"}, now=0)
    assert len(cache) == 0


# --- the checks stay what they were ------------------------------------------------------------


def with_header(token: str, header: dict[str, Any]) -> str:
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return ".".join([encoded, *token.split(".")[1:]])


@pytest.mark.parametrize("header", [{"alg": "none", "kid": KEY.kid}, {"alg": "HS256", "kid": KEY.kid},
                                    {"alg": ALGORITHM, "kid": OTHER.kid}, {"alg": ALGORITHM}],
                         ids=["alg none", "HS256", "another kid", "no kid"])
async def test_a_cached_tokens_claims_and_signature_under_another_header_are_checked_in_full(jwks, session,
                                                                                            header):
    token = signed()
    await jwks.verify(token, session)
    with pytest.raises(InvalidToken):
        await jwks.verify(with_header(token, header), session)


async def test_the_same_claims_signed_by_another_key_are_refused_after_the_genuine_token_was_cached(jwks,
                                                                                                   session):
    payload = claims()
    await jwks.verify(signed(payload), session)
    forged = jwt.encode(payload, OTHER.private, algorithm=ALGORITHM, headers={"kid": KEY.kid})
    with pytest.raises(InvalidToken, match="rejected"):
        await jwks.verify(forged, session)


async def test_an_invalid_token_is_never_remembered(jwks, session):
    for token in (signed(claims(aud="someone-else")), signed(claims(iss="https://evil.example")), "a.b.c"):
        with pytest.raises(InvalidToken):
            await jwks.verify(token, session)
    assert len(jwks.verified) == 0


# --- the key set changes ---------------------------------------------------------------------------


async def test_fetching_the_same_key_set_keeps_the_cache(jwks, session):
    await jwks.verify(signed(), session)
    await jwks.fetch(session)
    assert len(jwks.verified) == 1


async def test_a_rotation_empties_the_cache(published, jwks, session):
    keys, _ = published
    token = signed()
    await jwks.verify(token, session)
    keys.keys = [OTHER.jwk, KEY.jwk]  # a new signing key published alongside the old one
    await jwks.fetch(session)
    assert len(jwks.verified) == 0
    lookups = count_lookups(jwks)
    await jwks.verify(token, session)  # still valid: verified in full against the new set
    assert lookups.lookups == 1


async def test_a_withdrawn_key_stops_vouching_for_the_tokens_it_signed_even_cached_ones(published, jwks, session):
    keys, _ = published
    token = signed()
    await jwks.verify(token, session)
    keys.keys = [OTHER.jwk]
    await jwks.fetch(session)
    with pytest.raises(UnknownKey):
        await jwks.verify(token, session)


# --- bounded -------------------------------------------------------------------------------------


def test_the_cache_holds_at_most_its_size_dropping_the_oldest_first():
    cache = VerifiedTokens(size=3)
    for n in range(4):
        cache.put(f"token-{n}", {"exp": 2_000_000_000}, now=1_000_000_000)
    assert len(cache) == 3
    assert cache.get("token-0", now=1_000_000_000) is None
    assert all(cache.get(f"token-{n}", now=1_000_000_000) for n in (1, 2, 3))


def test_expired_entries_make_room_before_any_live_one_is_dropped():
    cache = VerifiedTokens(size=3)
    cache.put("live-old", {"exp": 3_000}, now=1_000)
    cache.put("expiring", {"exp": 1_500}, now=1_000)
    cache.put("live-new", {"exp": 3_000}, now=1_000)
    cache.put("latest", {"exp": 3_000}, now=2_000)  # full: "expiring" has expired by now
    assert [token for token in ("live-old", "live-new", "latest") if cache.get(token, now=2_000)] == [
        "live-old", "live-new", "latest"]


async def test_many_tokens_never_grow_the_verifiers_cache_past_its_size(published, session):
    _, url = published
    verifier = Jwks(url, ISSUER, AUDIENCE, cache_size=5)
    await verifier.fetch(session)
    for _ in range(12):
        await verifier.verify(signed(), session)
    assert len(verifier.verified) <= 5
