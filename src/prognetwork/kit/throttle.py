"""Fixed-window counters in Redis, shared by every replica (one atomic round trip).

A hit may count for several at once (`hit(..., amount=n)`): a caller that decides locally
reserves a batch of hits in one round trip (the gateway's rate limiter does).
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

# INCRBY, start the window on the first hit(s), report the count and the window's remaining time.
_HIT = """
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
if count == tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {count, ttl}
"""


# DECR each key that still exists, never below zero (a window that expired stays gone).
_UNDO = """
for _, key in ipairs(KEYS) do
  if (tonumber(redis.call('GET', key) or '0')) > 0 then redis.call('DECR', key) end
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Window:
    count: int
    retry_after_seconds: int
    ends_in_seconds: float = 0.0  # the window's remaining time, unrounded


class Counter:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._hit = redis.register_script(_HIT)
        self._undo = redis.register_script(_UNDO)

    async def hit(self, key: str, window_seconds: int, amount: int = 1) -> Window:
        """Count `amount` hits in the window (started by the first); the count includes them."""
        count, ttl_ms = await self._hit(keys=[key], args=[window_seconds * 1000, amount])
        ttl_ms = int(ttl_ms)
        return Window(int(count), max(1, -(-ttl_ms // 1000)), ttl_ms / 1000)

    async def peek(self, key: str) -> Window:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            count, ttl_ms = await pipe.execute()
        return Window(int(count or 0), max(1, -(-max(int(ttl_ms), 0) // 1000)))

    async def undo(self, *keys: str) -> None:
        """Take back one hit from each key (an attempt that turned out not to count)."""
        if keys:
            await self._undo(keys=list(keys))

    async def reset(self, key: str) -> None:
        await self.redis.delete(key)
