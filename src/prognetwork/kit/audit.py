"""The audit log: who did what to whom, when and from where — append-only and tamper-evident.

It is not the event log. Events drive the platform (consumers act on them, clients stream
them); audit records are for people answering "who did this?" afterwards: every admin action,
sign-ins and failed sign-ins, password resets, role and membership changes, revoked sessions and
billing changes, each with its actor, action, target, tenant, client address and request id.

Writers call `record()` inside the transaction that makes the change (as `kit.events.append`),
so a record exists if and only if its change committed; a refusal worth recording (a failed
sign-in) is recorded in a transaction of its own before the error is raised.

**The chain.** Sequence numbers are drawn under a transaction-level advisory lock held until
commit (`APPEND_LOCK_KEY`, which the event sequencer's steps take too; event appends take
none), as the newest record's
plus one: they are consecutive, and a gap is a deletion, never a rolled-back transaction. Each
record's `hash` is SHA-256 over a canonical encoding of every column — sorted-key JSON of seq,
time (ISO 8601), actor, action, target, tenant, origin, outcome, details and `prev_hash`, the
hash of the record before it. `verify()` recomputes it all
and names the first record that fails. It detects:

- a record changed in any column (its hash no longer matches its content);
- a record deleted from the middle or the start (a gap in the sequence), or inserted;
- records reordered (the sequence number is hashed, so a row moved to another seq fails);
- rows deleted from the start without a purge (see retention, below).

What the chain alone does not prove: the hash function is public, so someone who can write to
the database could delete the newest records (leaving a shorter valid chain) or change a record
and recompute every hash after it. **Signed checkpoints** close that: the user service
periodically (`checkpoint()`: every N records or T minutes) signs the newest record's seq and
hash with its Ed25519 token-signing key — whose public half is in its JWKS — after checking the
records since the previous checkpoint. `verify(keys=...)` checks each checkpoint's signature and
that the chain still passes through it: deleted newest records and a rewritten, rehashed stretch
are both found, as long as a checkpoint signed after them survives. Records newer than the
newest checkpoint are protected by the chain only, and someone who deletes checkpoints together
with the records they vouch for is caught only by a copy kept elsewhere: every checkpoint is also
written to the service's log (which is shipped off the database host). A record proves what was
written, not that it was true.

**Retention.** `purge()` deletes the records older than a date and appends an `audit.purged`
record naming the last sequence number removed and its hash; then it signs a checkpoint over
that record. `verify` starts from the oldest remaining record and accepts its `prev_hash` only
if it is that anchor, and (given keys) only if a signed checkpoint vouches for the purge record,
so old records removed any other way show as missing. Rows cannot be updated or deleted in
PostgreSQL except by `purge` (a trigger refuses; migration 0008): a guard against mistakes, not
against a superuser — that is what the chain is for.

The table is not tenant-scoped by row-level security: platform operators read it across
tenants, and tenants never read it directly. Records written inside a tenant scope
(`kit.tenancy.scope`) are inserted as the scoped role, which may insert and read, never change.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi import Depends
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    PrimaryKeyConstraint,
    String,
    Table,
    Uuid,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from starlette.requests import Request

from prognetwork.kit.db import Base
from prognetwork.kit.events import APPEND_LOCK_KEY

log = structlog.get_logger("prognetwork.audit")

GENESIS = "0" * 64  # the prev_hash of record 1
# Checkpoint writers (every replica's job, and purge) take turns under this lock.
CHECKPOINT_LOCK_KEY = 0x61756474
# Set (transaction-locally) only by `purge`: the append-only trigger lets its DELETEs through.
PURGE_SETTING = "prognetwork.audit_purge"
PURGED = "audit.purged"
# What a checkpoint signature covers, so it can never be taken for any other signed message.
CHECKPOINT_CONTEXT = b"prognetwork audit checkpoint v1\n"
BATCH = 1000
MAX_PAGE = 500

audit_log = Table(
    "audit_log",
    Base.metadata,
    # Drawn as the newest seq + 1 under the append lock, not from a sequence: no gaps but deletions.
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    # Set by the writer (microseconds, UTC), so the hashed value is exactly the stored one.
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("actor_id", Uuid, nullable=True),
    Column("actor_label", String(320), nullable=False),
    Column("actor_role", String(20), nullable=True),
    Column("action", String(100), nullable=False),
    Column("target_type", String(50), nullable=False),
    Column("target_id", String(200), nullable=True),
    Column("tenant_id", Uuid, nullable=True),
    Column("client_ip", String(64), nullable=True),
    Column("request_id", String(128), nullable=True),
    Column("outcome", String(20), nullable=False),
    # `json`, not `jsonb`: kept as written, so the details read back are the ones that were hashed
    # (jsonb normalises numbers: a float such as 1e16 would come back as an integer).
    Column("details", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_log_action_seq", "action", "seq"),
    Index("ix_audit_log_actor_label_seq", "actor_label", "seq"),
    Index("ix_audit_log_actor_id_seq", "actor_id", "seq"),
    Index("ix_audit_log_target_id_seq", "target_id", "seq"),
    Index("ix_audit_log_tenant_id_seq", "tenant_id", "seq"),
    Index("ix_audit_log_occurred_at", "occurred_at"),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    Base.metadata,
    Column("seq", BigInteger, nullable=False, autoincrement=False),  # the record vouched for
    Column("key_id", String(100), nullable=False),  # the signing key's JWKS `kid`
    Column("hash", String(64), nullable=False),
    Column("signed_at", DateTime(timezone=True), nullable=False),
    Column("signature", String(200), nullable=False),  # Ed25519, base64url
    # One per key and record: after a key rotation the new key signs the newest record too.
    PrimaryKeyConstraint("seq", "key_id"),
)


# -- who, from where ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted."""

    id: uuid.UUID | None  # the acting user, None for the system / CLI
    label: str  # their email, or "system", or "cli:<os user>"
    role: str | None = None  # platform role (user/operator/admin) when known


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the request came from, as this service saw it."""

    client_ip: str | None = None
    request_id: str | None = None


SYSTEM = Actor(None, "system")
# Someone not signed in (a failed sign-in, a password reset request): what they claimed goes in details.
ANONYMOUS = Actor(None, "anonymous")


def cli_actor() -> Actor:
    """The operator running a `prog` command, by their operating-system account."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container running as an arbitrary uid)
        user = "unknown"
    return Actor(None, f"cli:{user}")


def actor_of(claims: Mapping[str, Any]) -> Actor:
    """The signed-in caller of a verified access token (`sub`, `email`, platform `role`)."""
    sub, email, role = claims.get("sub"), claims.get("email"), claims.get("role")
    try:
        user_id = uuid.UUID(str(sub)) if sub else None
    except ValueError:
        user_id = None
    label = email if isinstance(email, str) and email else str(sub or "unknown")
    return Actor(user_id, label, role if isinstance(role, str) else None)


def origin_of(request: Request) -> Origin:
    """The client address as the server determined it (the connection's peer, or a trusted
    proxy's X-Forwarded-For) and the request id the kit's middleware assigned."""
    request_id = request.scope.get("prog.request_id")
    return Origin(
        client_ip=request.client.host if request.client else None,
        request_id=request_id if isinstance(request_id, str) else None,
    )


async def _request_origin(request: Request) -> Origin:
    # `async`: FastAPI would run a plain function in a thread pool.
    return origin_of(request)


RequestOrigin = Annotated[Origin, Depends(_request_origin)]


# -- writing ------------------------------------------------------------------------------------


async def record(
    session: AsyncSession,
    action: str,
    *,
    actor: Actor,
    target_type: str,
    target_id: str | None,
    tenant_id: uuid.UUID | None = None,
    origin: Origin | None = None,
    details: dict[str, Any] | None = None,
    outcome: str = "success",
) -> None:
    """Append a record in the caller's transaction; call it last, just before commit (it holds
    the append lock until then). Never put secrets (passwords, tokens) in `details`."""
    if not session.in_transaction():
        raise RuntimeError("audit.record() belongs inside the change's transaction (`async with db.begin()`)")
    await _append(
        session,
        action=action,
        actor=actor,
        target_type=target_type,
        target_id=target_id,
        tenant_id=tenant_id,
        origin=origin or _current_origin(),
        details=details,
        outcome=outcome,
    )


def _current_origin() -> Origin:
    """Outside a route that passed its origin: at least the request id the middleware bound."""
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    return Origin(request_id=request_id if isinstance(request_id, str) else None)


async def _append(
    session: AsyncSession,
    *,
    action: str,
    actor: Actor,
    target_type: str,
    target_id: str | None,
    tenant_id: uuid.UUID | None,
    origin: Origin,
    details: dict[str, Any] | None,
    outcome: str,
) -> tuple[int, str]:
    await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK_KEY})
    head = await _head(session)
    values: dict[str, Any] = {
        "seq": head[0] + 1 if head else 1,
        "occurred_at": datetime.now(UTC),
        "actor_id": actor.id,
        "actor_label": actor.label,
        "actor_role": actor.role,
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "tenant_id": tenant_id,
        "client_ip": origin.client_ip,
        "request_id": origin.request_id,
        "outcome": outcome,
        "details": _plain(details or {}),
        "prev_hash": head[1] if head else GENESIS,
    }
    values["hash"] = record_hash(values)
    await session.execute(insert(audit_log).values(values))
    return values["seq"], values["hash"]


def _plain(details: dict[str, Any]) -> dict[str, Any]:
    """Details as plain JSON values (ids and times as text), exactly as they will be read back."""
    if not isinstance(details, dict):
        raise TypeError("audit details must be a dict")
    plain: dict[str, Any] = json.loads(json.dumps(details, default=str, allow_nan=False))
    return plain


def record_hash(row: Mapping[Any, Any]) -> str:
    """SHA-256 (hex) of a record's canonical encoding: sorted-key JSON of every column but `hash`."""
    document = {
        "seq": row["seq"],
        "occurred_at": _iso(row["occurred_at"]),
        "actor_id": _text(row["actor_id"]),
        "actor_label": row["actor_label"],
        "actor_role": row["actor_role"],
        "action": row["action"],
        "target_type": row["target_type"],
        "target_id": row["target_id"],
        "tenant_id": _text(row["tenant_id"]),
        "client_ip": row["client_ip"],
        "request_id": row["request_id"],
        "outcome": row["outcome"],
        "details": row["details"],
        "prev_hash": row["prev_hash"],
    }
    return hashlib.sha256(_canonical(document)).hexdigest()


def _canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _text(value: object) -> str | None:
    return None if value is None else str(value)


async def _head(session: AsyncSession | AsyncConnection) -> tuple[int, str] | None:
    row = (
        await session.execute(
            select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
        )
    ).first()
    return (row.seq, row.hash) if row else None


# -- checkpoints ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signer:
    """The key checkpoints are signed with: the user service's current token-signing key."""

    key_id: str
    private_key: Ed25519PrivateKey


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    signed_at: datetime
    key_id: str
    signature: str
    # True: its signature verified with a trusted key; None: not checked (no such key given).
    verified: bool | None = None


def _checkpoint_message(seq: int, hash: str, signed_at: datetime) -> bytes:
    return CHECKPOINT_CONTEXT + _canonical({"seq": seq, "hash": hash, "signed_at": _iso(signed_at)})


def _signature_valid(checkpoint: Checkpoint, keys: Mapping[str, Ed25519PublicKey] | None) -> bool | None:
    key = keys.get(checkpoint.key_id) if keys is not None else None
    if key is None:
        return None
    try:
        padded = checkpoint.signature + "=" * (-len(checkpoint.signature) % 4)
        key.verify(
            base64.urlsafe_b64decode(padded),
            _checkpoint_message(checkpoint.seq, checkpoint.hash, checkpoint.signed_at),
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def keys_from_jwks(jwks: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """The Ed25519 public keys of a JWKS document (`/.well-known/jwks.json`), by key id: what
    a verifier without the private keys checks checkpoints with."""
    found: dict[str, Ed25519PublicKey] = {}
    for jwk in jwks.get("keys", []):
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and jwk.get("kid") and jwk.get("x"):
            raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
            found[jwk["kid"]] = Ed25519PublicKey.from_public_bytes(raw)
    return found


async def checkpoint(
    session: AsyncSession, signer: Signer, *, every_records: int = 1, every_seconds: float = 0.0
) -> Checkpoint | None:
    """Sign the newest record if a checkpoint is due: `every_records` records or `every_seconds`
    after the newest checkpoint, or at once when the newest was signed by another key (a
    rotation). The records since the newest checkpoint are checked first: a broken chain is
    never signed (`ChainBroken`). Returns the checkpoint written, if any. Its own transaction."""
    async with session.begin():
        # Another replica is at it: one checkpoint per round is enough.
        locked = await session.execute(
            text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": CHECKPOINT_LOCK_KEY}
        )
        if not locked.scalar():
            return None
        return await _checkpoint_head(session, signer, every_records, every_seconds)


async def _checkpoint_head(
    session: AsyncSession, signer: Signer, every_records: int, every_seconds: float
) -> Checkpoint | None:
    """Check the records after the newest checkpoint and sign the newest record, if due."""
    head = await _head(session)
    if head is None:
        return None
    newest = await _newest_checkpoints(session)
    if newest and newest[0].seq > head[0]:
        first = head[0] + 1
        raise ChainBroken(
            Break(first, f"{_missing(first, newest[0].seq)}, though a checkpoint vouches for them")
        )
    if newest and not _due(newest, head[0], signer.key_id, every_records, every_seconds):
        return None
    # From the newest checkpoint (signed by us earlier: its hash is the chain's there), else from
    # the start.
    start = (newest[0].seq, newest[0].hash) if newest else None
    chain = _Chain(None if start else await _anchor(session), start)
    async for row in _rows(session, after=start[0] if start else 0):
        broken = chain.feed(row)
        if broken is not None:
            raise ChainBroken(broken)
    if chain.last is None:
        return None
    seq, hash = chain.last
    signed_at = datetime.now(UTC)
    signature = _b64(signer.private_key.sign(_checkpoint_message(seq, hash, signed_at)))
    await session.execute(
        pg_insert(audit_checkpoints)
        .values(seq=seq, key_id=signer.key_id, hash=hash, signed_at=signed_at, signature=signature)
        .on_conflict_do_nothing()
    )
    # A copy outside the database: whoever can rewrite the table cannot rewrite shipped logs.
    log.info("audit checkpoint", seq=seq, hash=hash, key_id=signer.key_id, signed_at=_iso(signed_at))
    return Checkpoint(seq, hash, signed_at, signer.key_id, signature, verified=True)


def _due(newest: list[Checkpoint], head: int, key_id: str, every_records: int, every_seconds: float) -> bool:
    seq = newest[0].seq
    if all(c.key_id != key_id for c in newest):
        return True  # a rotated key: the current one signs the newest record too
    if head - seq >= every_records:
        return True
    age = datetime.now(UTC) - max(c.signed_at for c in newest)
    return head > seq and age >= timedelta(seconds=every_seconds)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def _newest_checkpoints(session: AsyncSession | AsyncConnection) -> list[Checkpoint]:
    """The checkpoints of the newest record any key signed (one per key)."""
    newest = select(func.max(audit_checkpoints.c.seq)).scalar_subquery()
    rows = (await session.execute(select(audit_checkpoints).where(audit_checkpoints.c.seq == newest))).all()
    return [_checkpoint_of(row._mapping) for row in rows]


async def _checkpoints(session: AsyncSession | AsyncConnection) -> list[Checkpoint]:
    """Every checkpoint, oldest first. Few: one per N records or T minutes of activity."""
    query = select(audit_checkpoints).order_by(audit_checkpoints.c.seq, audit_checkpoints.c.key_id)
    return [_checkpoint_of(row._mapping) for row in (await session.execute(query)).all()]


def _checkpoint_of(row: RowMapping) -> Checkpoint:
    return Checkpoint(row["seq"], row["hash"], row["signed_at"], row["key_id"], row["signature"])


# -- checking the chain ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Break:
    """Where the chain fails: the first record not to be trusted, and why."""

    seq: int
    reason: str


class ChainBroken(Exception):
    """The records a checkpoint would vouch for do not chain: nothing was signed."""

    def __init__(self, broken: Break) -> None:
        super().__init__(f"record {broken.seq}: {broken.reason}")
        self.broken = broken


def _span(first: int, last: int) -> str:
    return f"record {first}" if first == last else f"records {first}..{last}"


def _missing(first: int, last: int) -> str:
    return f"{_span(first, last)} {'is' if first == last else 'are'} missing"


class _Chain:
    """Follows records in sequence order from a trusted start, finding the first that fails."""

    def __init__(self, anchor: tuple[int, str] | None, start: tuple[int, str] | None = None) -> None:
        self.anchor = anchor  # (last seq purged, its hash), from the newest `audit.purged` record
        self.last = start  # (seq, hash) of the newest record checked, or a checkpoint to continue from
        self.first_seq: int | None = start[0] + 1 if start else None
        self.checked = 0

    def feed(self, row: Mapping[Any, Any]) -> Break | None:
        seq = row["seq"]
        if self.last is None:
            floor = self.anchor[0] if self.anchor else 0
            if seq == 1:
                previous = GENESIS
            elif self.anchor is not None and seq == floor + 1:
                previous = self.anchor[1]
            else:
                missing = floor + 1 if seq > floor + 1 else 1
                them = "it" if missing == seq - 1 else "them"
                return Break(missing, f"{_missing(missing, seq - 1)}, and no purge accounts for {them}")
            self.first_seq = seq
        else:
            if seq != self.last[0] + 1:
                gap = self.last[0] + 1
                return Break(gap, f"{_missing(gap, seq - 1)}: record {seq} follows record {self.last[0]}")
            previous = self.last[1]
        if record_hash(row) != row["hash"]:
            return Break(seq, "its content does not match its hash: it was changed after it was written")
        if row["prev_hash"] != previous:
            return Break(
                seq,
                f"it does not link to record {seq - 1} (prev_hash differs): records were reordered or replaced",
            )
        self.last = (seq, row["hash"])
        self.checked += 1
        return None


async def _anchor(session: AsyncSession | AsyncConnection) -> tuple[int, str] | None:
    """(last seq purged, its hash) from the newest purge record: where the remaining chain starts."""
    purge = await _newest_purge(session)
    details = (purge["details"] if purge is not None else None) or {}
    through, anchor = details.get("through_seq"), details.get("anchor_hash")
    if isinstance(through, int) and isinstance(anchor, str):
        return through, anchor
    return None


async def _newest_purge(session: AsyncSession | AsyncConnection) -> RowMapping | None:
    query = (
        select(audit_log.c.seq, audit_log.c.details)
        .where(audit_log.c.action == PURGED)
        .order_by(audit_log.c.seq.desc())
        .limit(1)
    )
    return (await session.execute(query)).mappings().first()


async def _rows(session: AsyncSession | AsyncConnection, *, after: int = 0) -> AsyncIterator[RowMapping]:
    """Records after `after` in sequence order, read in batches (bounded memory)."""
    while True:
        query = select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq).limit(BATCH)
        batch = (await session.execute(query)).mappings().all()
        for row in batch:
            yield row
        if len(batch) < BATCH:
            return
        after = batch[-1]["seq"]


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    checked: int  # records whose hash and link were checked
    first_bad_seq: int | None
    reason: str | None
    last_checkpoint: Checkpoint | None  # the newest checkpoint the chain passes through

    def summary(self) -> str:
        """One line, for the CLI and logs."""
        if not self.ok:
            return f"audit log tampered: record {self.first_bad_seq}: {self.reason}"
        return f"audit log intact: {self.checked} records, last checkpoint {_describe(self.last_checkpoint)}"


def _describe(checkpoint: Checkpoint | None) -> str:
    if checkpoint is None:
        return "none"
    trust = {True: "signature valid", False: "signature invalid", None: "signature not checked"}
    return (
        f"at record {checkpoint.seq} ({_iso(checkpoint.signed_at)}, key {checkpoint.key_id}, "
        f"{trust[checkpoint.verified]})"
    )


async def verify(
    db: AsyncSession | AsyncConnection, *, keys: Mapping[str, Ed25519PublicKey] | None = None
) -> Verdict:
    """Recompute the whole chain and check it against the checkpoints; the first bad record.

    `keys` (key id → public key: `keys_from_jwks`, or the signing keys' public halves) are what
    checkpoint signatures are checked with; without them signatures are not checked and a
    purge is taken at its word. One REPEATABLE READ transaction (unless the caller is in one):
    a consistent picture while records are appended or purged meanwhile.
    """
    async with _snapshot(db):
        anchor = await _anchor(db)
        purge = await _newest_purge(db)
        pending = await _checkpoints(db)
        chain = _Chain(anchor)
        last_checkpoint: Checkpoint | None = None
        signed_through = 0  # the newest record a checkpoint with a valid signature vouches for
        index = 0
        async for row in _rows(db):
            broken = chain.feed(row)
            if broken is not None:
                return _bad(chain, broken, last_checkpoint)
            seq = row["seq"]
            while index < len(pending) and pending[index].seq < seq:
                index += 1  # of records purged before the oldest remaining one
            while index < len(pending) and pending[index].seq == seq:
                found = pending[index]
                index += 1
                signed = _signature_valid(found, keys)
                if signed is False:
                    return _bad(chain, _forged(found), last_checkpoint)
                if found.hash != row["hash"]:
                    first = max(signed_through, (chain.first_seq or 1) - 1) + 1
                    reason = (
                        f"{_span(first, seq)} {'was' if first == seq else 'were'} rewritten and rehashed: "
                        f"record {seq}'s hash is not the "
                        f"one the checkpoint signed at {_iso(found.signed_at)} vouches for"
                    )
                    return _bad(chain, Break(first, reason), last_checkpoint)
                last_checkpoint = _with_trust(found, signed, last_checkpoint)
                if signed:
                    signed_through = seq
        if index < len(pending):
            # Checkpoints of records that are no longer there: the newest records were removed.
            found = pending[-1]
            if _signature_valid(found, keys) is False:
                return _bad(chain, _forged(found), last_checkpoint)
            head = chain.last[0] if chain.last else (anchor[0] if anchor else 0)
            reason = (
                f"{_missing(head + 1, found.seq)}: the checkpoint signed at "
                f"{_iso(found.signed_at)} vouches for record {found.seq}; the newest left is {head or 'none'}"
            )
            return _bad(chain, Break(head + 1, reason), last_checkpoint)
        if keys is not None and purge is not None and anchor is not None and chain.first_seq == anchor[0] + 1:
            if signed_through < purge["seq"]:
                reason = (
                    f"it says records up to {anchor[0]} were purged, but no signed checkpoint vouches for it: "
                    "the oldest records may have been removed some other way"
                )
                return _bad(chain, Break(purge["seq"], reason), last_checkpoint)
        return Verdict(True, chain.checked, None, None, last_checkpoint)


def _forged(checkpoint: Checkpoint) -> Break:
    return Break(
        checkpoint.seq,
        f"the checkpoint of record {checkpoint.seq} does not carry a valid signature of key "
        f"{checkpoint.key_id}: checkpoints were tampered with",
    )


def _with_trust(found: Checkpoint, signed: bool | None, previous: Checkpoint | None) -> Checkpoint:
    checkpoint = Checkpoint(found.seq, found.hash, found.signed_at, found.key_id, found.signature, signed)
    if previous is not None and previous.seq == found.seq and previous.verified and not signed:
        return previous  # the same record, signed by two keys: report the one that verified
    return checkpoint


def _bad(chain: _Chain, broken: Break, last_checkpoint: Checkpoint | None) -> Verdict:
    return Verdict(False, chain.checked, broken.seq, broken.reason, last_checkpoint)


@asynccontextmanager
async def _snapshot(db: AsyncSession | AsyncConnection) -> AsyncIterator[None]:
    if db.in_transaction():
        yield  # the caller's transaction, and its isolation
        return
    async with db.begin():
        await db.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        yield


# -- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    occurred_at: datetime
    actor_id: uuid.UUID | None
    actor_label: str
    actor_role: str | None
    action: str
    target_type: str
    target_id: str | None
    tenant_id: uuid.UUID | None
    client_ip: str | None
    request_id: str | None
    outcome: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, row: Mapping[Any, Any]) -> AuditRecord:
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    def as_json(self) -> dict[str, Any]:
        """JSON-ready, every column (hashes included, so an export can be re-verified elsewhere)."""
        return {
            "seq": self.seq,
            "occurred_at": _iso(self.occurred_at),
            "actor_id": _text(self.actor_id),
            "actor_label": self.actor_label,
            "actor_role": self.actor_role,
            "action": self.action,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "tenant_id": _text(self.tenant_id),
            "client_ip": self.client_ip,
            "request_id": self.request_id,
            "outcome": self.outcome,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


async def page(
    session: AsyncSession,
    *,
    actor: str | None = None,
    target: str | None = None,
    action: str | None = None,
    before_seq: int | None = None,
    limit: int = 50,
) -> list[AuditRecord]:
    """Records newest first, for the console and the API.

    `actor`: an actor's label (email, "system", "cli:…") or user id. `target`: a target id, or
    `type:id`; a tenant id also finds what happened inside that tenant. `action`: exact, or a
    prefix ending in `*` ("auth.*"). `before_seq`: the page after the one that ended there.
    """
    query = select(audit_log).order_by(audit_log.c.seq.desc()).limit(max(1, min(limit, MAX_PAGE)))
    if actor:
        as_id = _uuid(actor)
        query = query.where(
            audit_log.c.actor_id == as_id if as_id else audit_log.c.actor_label.in_({actor, actor.lower()})
        )
    if target:
        kind, _, ident = target.partition(":")
        matches = [audit_log.c.target_id == target]
        if ident:
            matches.append(and_(audit_log.c.target_type == kind, audit_log.c.target_id == ident))
        tenant = _uuid(target)
        if tenant:
            matches.append(audit_log.c.tenant_id == tenant)
        query = query.where(or_(*matches))
    if action:
        if action.endswith("*"):
            prefix = action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(audit_log.c.action.like(prefix + "%", escape="\\"))
        else:
            query = query.where(audit_log.c.action == action)
    if before_seq is not None:
        query = query.where(audit_log.c.seq < before_seq)
    return [AuditRecord.of(row) for row in (await session.execute(query)).mappings().all()]


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def export(
    session: AsyncSession | AsyncConnection, *, since: datetime | None = None
) -> AsyncIterator[AuditRecord]:
    """Every record (since a time), oldest first, streamed in batches: `prog audit export`."""
    after = 0
    while True:
        query = select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq).limit(BATCH)
        if since is not None:
            query = query.where(audit_log.c.occurred_at >= since)
        batch = (await session.execute(query)).mappings().all()
        for row in batch:
            yield AuditRecord.of(row)
        if len(batch) < BATCH:
            return
        after = batch[-1]["seq"]


# -- retention -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Purged:
    deleted: int
    through_seq: int  # the newest record removed; the chain now starts after it
    record_seq: int  # the `audit.purged` record that says so


async def purge(
    session: AsyncSession,
    *,
    before: datetime,
    signer: Signer,
    actor: Actor,
    origin: Origin | None = None,
) -> Purged | None:
    """Delete the records older than `before` (those up to the first one that is not), record
    the purge in the chain and sign a checkpoint over that record; None if nothing was old
    enough. Its own transaction."""
    async with session.begin():
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK_KEY})
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHECKPOINT_LOCK_KEY})
        # Up to the first record that is not old enough: occurred_at comes from several clocks,
        # so it is not strictly ordered by seq, and a newer record is never taken with the old.
        kept = await session.scalar(
            select(func.min(audit_log.c.seq)).where(audit_log.c.occurred_at >= before)
        )
        oldest = await session.scalar(select(func.min(audit_log.c.seq)))
        through = (kept - 1) if kept is not None else (await _head(session) or (0, ""))[0]
        if oldest is None or through < oldest:
            return None
        anchor = await session.scalar(select(audit_log.c.hash).where(audit_log.c.seq == through))
        await session.execute(text("SELECT set_config(:name, 'on', true)"), {"name": PURGE_SETTING})
        deleted = await session.scalar(select(func.count()).where(audit_log.c.seq <= through)) or 0
        await session.execute(delete(audit_log).where(audit_log.c.seq <= through))
        await session.execute(delete(audit_checkpoints).where(audit_checkpoints.c.seq <= through))
        await session.execute(text("SELECT set_config(:name, 'off', true)"), {"name": PURGE_SETTING})
        record_seq, _ = await _append(
            session,
            action=PURGED,
            actor=actor,
            target_type="audit_log",
            target_id=None,
            tenant_id=None,
            origin=origin or _current_origin(),
            details={
                "through_seq": through,
                "anchor_hash": anchor,
                "deleted": deleted,
                "before": _iso(before),
            },
            outcome="success",
        )
        # Verify trusts the anchor only under a signed checkpoint: sign one now (ChainBroken, and
        # nothing purged, if the records since the last checkpoint do not chain).
        await _checkpoint_head(session, signer, every_records=1, every_seconds=0.0)
    log.info("audit log purged", deleted=deleted, through_seq=through, before=_iso(before))
    return Purged(deleted, through, record_seq)
