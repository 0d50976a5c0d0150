"""Redis access: one async client (with its own pool) per process."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from redis.asyncio import Redis

if TYPE_CHECKING:
    from redis.typing import KeyT


class TextRedis(Redis):
    """A client that decodes every reply to `str` (decode_responses=True): `create_redis` builds it.

    redis-py annotates replies as `bytes | str` whatever the client decodes; the commands whose
    replies the services read as text are declared here with the type they really have.
    """

    if TYPE_CHECKING:

        def get(self, name: KeyT) -> Awaitable[str | None]: ...

        # redis-py types SMEMBERS as set[bytes | str] whatever decode_responses says, and set is
        # invariant, so narrowing its members to str counts as an incompatible override.
        def smembers(self, name: KeyT) -> Awaitable[set[str]]: ...  # type: ignore[override]


def create_redis(url: str) -> TextRedis:
    client = TextRedis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=2,
        health_check_interval=15,
        retry_on_timeout=True,
    )
    # from_url builds `cls`, but redis-py annotates it as returning the base class.
    assert isinstance(client, TextRedis)
    return client
