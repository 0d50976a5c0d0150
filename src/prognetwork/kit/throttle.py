"""Fixed-window counters in Redis, shared by every replica (one atomic round trip)."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

# INCR, start the window on the first hit, report the count and the window's remaining time.
_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
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


class Counter:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._hit = redis.register_script(_HIT)
        self._undo = redis.register_script(_UNDO)

    async def hit(self, key: str, window_seconds: int) -> Window:
        count, ttl_ms = await self._hit(keys=[key], args=[window_seconds * 1000])
        return Window(int(count), max(1, -(-int(ttl_ms) // 1000)))

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
