"""argon2id at OWASP's parameters (19 MiB, t=2, p=1), always off the event loop."""

from __future__ import annotations

import asyncio
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


@lru_cache(maxsize=1)
def _decoy_hash() -> str:
    return HASHER.hash("decoy password for unknown accounts")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(HASHER.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant work whether or not the account exists (no enumeration by timing)."""
    target = password_hash if password_hash else await asyncio.to_thread(_decoy_hash)
    try:
        ok = await asyncio.to_thread(HASHER.verify, target, password)
    except (VerificationError, InvalidHashError):
        return False
    return ok and password_hash is not None


def needs_rehash(password_hash: str) -> bool:
    return HASHER.check_needs_rehash(password_hash)
