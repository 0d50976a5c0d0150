"""Appending events to the event log directly, as a service's transaction would."""

from __future__ import annotations

from prognetwork.kit.events import append, sequenced


async def append_events(sessions, count: int, *, type: str = "test.burst", user_id=None, tenant_id=None,
                        private: bool = False, per_transaction: int = 1, payload: dict | None = None) -> list[int]:
    """Append `count` events; their sequence numbers (drawn once each transaction committed)."""
    seqs: list[int] = []
    while len(seqs) < count:
        async with sessions() as session, session.begin():
            appended = [
                await append(session, type, {"n": len(seqs) + i, **(payload or {})},
                             user_id=user_id, tenant_id=tenant_id, private=private)
                for i in range(min(per_transaction, count - len(seqs)))
            ]
        seqs += [await sequenced(sessions, event.id) for event in appended]
    return seqs
