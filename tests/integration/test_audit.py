"""The audit log against real PostgreSQL: the hash chain and its signed checkpoints, tampering done
directly in the database (a changed, deleted, reordered or rehashed row, the newest rows removed,
a forged checkpoint) found at the right record, retention that keeps the chain verifiable, the
append-only guard, records written inside a tenant scope, the API's roles, `prog audit …`, and the
records real sign-ins, password resets, membership changes and billing webhooks leave.

Chain and tampering tests use a database of this module's own (`own_*` fixtures), so what they do
to the log never meets another module's records; tampering happens in transactions that are
rolled back, so each test finds an intact log."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from datetime import datetime

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from prognetwork.kit import audit, migrations, tenancy
from prognetwork.kit import db as kit_db
from prognetwork.users.keys import generate_pem, load_key
from tests.helpers.accounts import PASSWORD, login, unique_email, verified_user
from tests.helpers.audit import TESTER, append, records, rehash_from, run_prog, tampering
from tests.helpers.billing import tenant_token
from tests.helpers.databases import create_database, drop_database, with_database
from tests.helpers.polling import eventually_async
from tests.helpers.problems import assert_problem
from tests.helpers.tenants import create_tenant, invitation_event, join, person
from tests.helpers.threads import in_thread
from tests.helpers.tokens import bearer, mint

NEW_PASSWORD = "a brand new passphrase"


# -- fixtures: a database of this module's own --------------------------------------------------------


@pytest.fixture(scope="module")
def audit_database(servers) -> str:
    name = f"prog_test_audit_{uuid.uuid4().hex[:10]}"
    in_thread(asyncio.run, create_database(servers.pg_admin_url, name))
    url = with_database(servers.pg_admin_url, name)
    in_thread(migrations.upgrade, url)
    yield url
    in_thread(asyncio.run, drop_database(servers.pg_admin_url, name))


@pytest.fixture
async def own_engine(audit_database):
    engine = kit_db.create_engine(audit_database, pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture
def own_sessions(own_engine):
    return kit_db.sessionmaker(own_engine)


@pytest.fixture
async def own_db(audit_database):
    conn = await asyncpg.connect(audit_database)
    yield conn
    await conn.close()


@pytest.fixture
def signer(signing_key) -> audit.Signer:
    key = load_key(signing_key)
    return audit.Signer(key.kid, key.private)


@pytest.fixture
def public_keys(signing_key) -> dict:
    key = load_key(signing_key)
    return {key.kid: key.public}


async def verified(sessions, keys) -> audit.Verdict:
    async with sessions() as session:
        return await audit.verify(session, keys=keys)


async def checkpoint(sessions, signer) -> audit.Checkpoint:
    async with sessions() as session:
        made = await audit.checkpoint(session, signer)
    assert made is not None
    return made


# -- the chain ----------------------------------------------------------------------------------------


async def test_each_record_hashes_its_content_and_links_to_the_one_before(own_sessions, own_db, public_keys):
    seqs = await append(own_sessions, 3)
    rows = [row for row in await records(own_db) if row["seq"] in seqs]
    assert [row["seq"] for row in rows] == seqs
    assert all(after["prev_hash"] == before["hash"] for before, after in itertools.pairwise(rows))
    assert all(audit.record_hash(row) == row["hash"] for row in rows)
    first = rows[0]
    assert (first["actor_id"], first["actor_label"], first["actor_role"]) == (TESTER.id, TESTER.label, "admin")
    assert first["details"] == {"n": 0, "note": "written by a test"} and first["outcome"] == "success"

    verdict = await verified(own_sessions, public_keys)
    assert verdict.ok and verdict.first_bad_seq is None and verdict.reason is None
    assert verdict.checked == await own_db.fetchval("SELECT count(*) FROM audit_log")
    assert verdict.summary().startswith(f"audit log intact: {verdict.checked} records, last checkpoint")


async def test_a_record_exists_only_if_its_change_commits(own_sessions, own_db):
    newest = await own_db.fetchval("SELECT max(seq) FROM audit_log")
    with pytest.raises(LookupError):
        async with own_sessions() as session, session.begin():
            await audit.record(session, "test.rolled_back", actor=TESTER, target_type="thing", target_id="x")
            raise LookupError("the change failed")
    assert await own_db.fetchval("SELECT max(seq) FROM audit_log") == newest
    async with own_sessions() as session:
        with pytest.raises(RuntimeError, match="inside the change's transaction"):
            await audit.record(session, "test.no_transaction", actor=TESTER, target_type="thing", target_id="x")


async def test_rows_cannot_be_changed_or_deleted_in_place(own_sessions, own_db, signer):
    [seq] = await append(own_sessions, 1)
    await checkpoint(own_sessions, signer)
    for statement in ("UPDATE audit_log SET outcome = 'failure' WHERE seq = $1",
                      "DELETE FROM audit_log WHERE seq = $1",
                      "UPDATE audit_checkpoints SET hash = 'x' WHERE seq = $1"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await own_db.execute(statement, seq)
    for table in ("audit_log", "audit_checkpoints"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await own_db.execute(f"TRUNCATE {table}")


# -- tampering directly in PostgreSQL ---------------------------------------------------------------------

SWAP = ["UPDATE audit_log SET seq = -1 WHERE seq = :b", "UPDATE audit_log SET seq = :b WHERE seq = :c",
        "UPDATE audit_log SET seq = :c WHERE seq = -1"]


@pytest.mark.parametrize(("statements", "reason"), [
    pytest.param(["UPDATE audit_log SET details = '{\"n\": 99, \"note\": \"written by a test\"}' WHERE seq = :b"],
                 "changed after it was written", id="details-changed"),
    pytest.param(["UPDATE audit_log SET actor_label = 'someone-else@example.com' WHERE seq = :b"],
                 "changed after it was written", id="actor-changed"),
    pytest.param(["UPDATE audit_log SET occurred_at = occurred_at - interval '1 day' WHERE seq = :b"],
                 "changed after it was written", id="time-changed"),
    pytest.param(["DELETE FROM audit_log WHERE seq = :b"], "is missing", id="middle-row-deleted"),
    pytest.param(SWAP, "changed after it was written", id="two-rows-swapped"),
    pytest.param(["UPDATE audit_log SET seq = -1 WHERE seq = :b", "UPDATE audit_log SET seq = :b WHERE seq = :c",
                  "DELETE FROM audit_log WHERE seq = -1"], "changed after it was written", id="row-moved-up"),
])
async def test_tampering_with_a_row_is_found_at_that_row(own_engine, own_sessions, public_keys, statements, reason):
    seqs = await append(own_sessions, 4)
    b, c = seqs[1], seqs[2]
    async with tampering(own_engine) as conn:
        for statement in statements:
            await conn.execute(text(statement), {"b": b, "c": c})
        verdict = await audit.verify(conn, keys=public_keys)
    assert not verdict.ok and verdict.first_bad_seq == b, verdict
    assert reason in verdict.reason
    assert verdict.summary() == f"audit log tampered: record {b}: {verdict.reason}"
    assert (await verified(own_sessions, public_keys)).ok  # rolled back: intact again


async def test_deleting_the_oldest_records_without_a_purge_is_found(own_engine, own_sessions, public_keys):
    await append(own_sessions, 2)
    async with tampering(own_engine) as conn:
        oldest = (await conn.execute(text("SELECT min(seq) FROM audit_log"))).scalar_one()
        await conn.execute(text("DELETE FROM audit_log WHERE seq = :s"), {"s": oldest})
        verdict = await audit.verify(conn, keys=public_keys)
    assert verdict.first_bad_seq == oldest and "no purge accounts for" in verdict.reason


async def test_deleting_the_newest_records_is_found_against_the_signed_checkpoint(
        own_engine, own_sessions, signer, public_keys):
    seqs = await append(own_sessions, 3)
    made = await checkpoint(own_sessions, signer)
    assert made.seq == seqs[-1] and made.key_id == signer.key_id
    verdict = await verified(own_sessions, public_keys)
    assert verdict.ok and verdict.last_checkpoint.seq == made.seq and verdict.last_checkpoint.verified
    assert f"last checkpoint at record {made.seq}" in verdict.summary()

    async with tampering(own_engine) as conn:
        await conn.execute(text("DELETE FROM audit_log WHERE seq >= :s"), {"s": seqs[1]})
        verdict = await audit.verify(conn, keys=public_keys)
    assert not verdict.ok and verdict.first_bad_seq == seqs[1], verdict
    assert f"records {seqs[1]}..{seqs[2]} are missing" in verdict.reason and "checkpoint" in verdict.reason


async def test_a_rewritten_and_rehashed_stretch_is_found_against_the_signed_checkpoint(
        own_engine, own_sessions, signer, public_keys):
    await append(own_sessions, 1)
    before = await checkpoint(own_sessions, signer)
    seqs = await append(own_sessions, 3)
    await checkpoint(own_sessions, signer)
    async with tampering(own_engine) as conn:
        # Someone who knows the algorithm changes a record and recomputes every hash after it:
        # the chain is whole again, and only the checkpoint signed before knows better.
        await conn.execute(text("UPDATE audit_log SET target_id = 'another' WHERE seq = :s"), {"s": seqs[1]})
        await rehash_from(conn, seqs[1])
        verdict = await audit.verify(conn, keys=public_keys)
    assert not verdict.ok and verdict.first_bad_seq == before.seq + 1, verdict
    assert f"records {before.seq + 1}..{seqs[-1]} were rewritten and rehashed" in verdict.reason


async def test_a_checkpoint_altered_in_the_database_fails_its_signature(
        own_engine, own_sessions, signer, public_keys):
    await append(own_sessions, 1)
    made = await checkpoint(own_sessions, signer)
    async with tampering(own_engine) as conn:
        await conn.execute(text("UPDATE audit_checkpoints SET signed_at = signed_at + interval '1 hour' "
                                "WHERE seq = :s"), {"s": made.seq})
        verdict = await audit.verify(conn, keys=public_keys)
    assert verdict.first_bad_seq == made.seq and "valid signature" in verdict.reason
    # By a key nobody trusts (rotated out long ago): compared with the chain, but vouching for nothing.
    verdict = await verified(own_sessions, {})
    assert verdict.ok and verdict.last_checkpoint.verified is None


async def test_after_a_key_rotation_the_new_key_signs_the_newest_record_at_once(own_sessions, signer, public_keys):
    await append(own_sessions, 1)
    old = await checkpoint(own_sessions, signer)
    async with own_sessions() as session:  # nothing new since: not due for the same key
        assert await audit.checkpoint(session, signer) is None
    new_key = load_key(generate_pem())
    rotated = await checkpoint(own_sessions, audit.Signer(new_key.kid, new_key.private))
    assert (rotated.seq, rotated.hash) == (old.seq, old.hash) and rotated.key_id != old.key_id
    # The old key withdrawn; the published key set is all a verifier needs.
    only_new = await verified(own_sessions, audit.keys_from_jwks({"keys": [new_key.jwk]}))
    assert only_new.ok and only_new.last_checkpoint.key_id == new_key.kid and only_new.last_checkpoint.verified
    assert (await verified(own_sessions, public_keys)).ok


async def test_a_checkpoint_is_never_signed_over_a_broken_chain(own_engine, own_sessions, signer):
    seqs = await append(own_sessions, 2)
    async with tampering(own_engine) as conn:
        await conn.execute(text("UPDATE audit_log SET outcome = 'failure' WHERE seq = :s"), {"s": seqs[0]})
        async with kit_db.sessionmaker(own_engine)(bind=conn) as session:  # sees the tampering
            with pytest.raises(audit.ChainBroken) as refused:
                await audit.checkpoint(session, signer)
    assert refused.value.broken.seq == seqs[0]


# -- retention --------------------------------------------------------------------------------------------


async def test_a_purge_removes_old_records_and_the_chain_still_verifies(
        own_engine, own_sessions, own_db, signer, public_keys):
    seqs = await append(own_sessions, 4)
    cutoff = await own_db.fetchval("SELECT occurred_at FROM audit_log WHERE seq = $1", seqs[2])
    async with own_sessions() as session:
        purged = await audit.purge(session, before=cutoff, signer=signer, actor=TESTER)
    assert purged is not None and purged.through_seq == seqs[1] and purged.deleted >= 2
    assert await own_db.fetchval("SELECT min(seq) FROM audit_log") == seqs[2]
    [note] = await records(own_db, audit.PURGED, seq=purged.record_seq)
    anchor = note["details"]
    assert anchor["through_seq"] == seqs[1] and anchor["deleted"] == purged.deleted
    assert note["actor_label"] == TESTER.label

    verdict = await verified(own_sessions, public_keys)
    assert verdict.ok, verdict
    assert verdict.last_checkpoint.seq == purged.record_seq and verdict.last_checkpoint.verified
    await append(own_sessions, 1)
    assert (await verified(own_sessions, public_keys)).ok
    async with own_sessions() as session:  # nothing older than the cutoff is left
        assert await audit.purge(session, before=cutoff, signer=signer, actor=TESTER) is None

    # A purge record no signed checkpoint vouches for could have been appended by anyone.
    async with tampering(own_engine) as conn:
        await conn.execute(text("DELETE FROM audit_checkpoints WHERE seq >= :s"), {"s": purged.record_seq})
        verdict = await audit.verify(conn, keys=public_keys)
    assert verdict.first_bad_seq == purged.record_seq and "no signed checkpoint" in verdict.reason
    # Records removed beyond what the purge says are missing.
    async with tampering(own_engine) as conn:
        await conn.execute(text("DELETE FROM audit_log WHERE seq = :s"), {"s": seqs[2]})
        verdict = await audit.verify(conn, keys=public_keys)
    assert verdict.first_bad_seq == seqs[2] and "no purge accounts for" in verdict.reason


# -- inside a tenant scope --------------------------------------------------------------------------------


async def test_a_change_in_a_tenant_scope_is_recorded_and_the_scoped_role_cannot_alter_records(
        own_sessions, own_db, public_keys):
    tenant = uuid.uuid4()
    everything = await own_db.fetchval("SELECT count(*) FROM audit_log")
    async with own_sessions() as session, session.begin():
        await tenancy.scope(session, tenant, TESTER.id)
        assert (await session.execute(text("SELECT current_user"))).scalar() == tenancy.TENANT_ROLE
        # Not tenant-scoped: the scope sees the whole log (it chains to the newest record, any tenant's).
        assert (await session.execute(text("SELECT count(*) FROM audit_log"))).scalar() == everything
        await audit.record(session, "test.scoped", actor=TESTER, target_type="tenant", target_id=str(tenant),
                           tenant_id=tenant)
    [row] = await records(own_db, "test.scoped", tenant_id=tenant)
    for statement in ("UPDATE audit_log SET outcome = 'failure' WHERE seq = :s",
                      "DELETE FROM audit_log WHERE seq = :s",
                      "DELETE FROM audit_checkpoints WHERE seq = :s"):
        async with own_sessions() as session:
            with pytest.raises(DBAPIError, match="permission denied"):
                async with session.begin():
                    await tenancy.scope(session, tenant, TESTER.id)
                    await session.execute(text(statement), {"s": row["seq"]})
    assert (await verified(own_sessions, public_keys)).ok


# -- prog audit ------------------------------------------------------------------------------------------


@pytest.fixture
def audit_env(audit_database, redis_url, secrets_dir, tmp_path) -> dict[str, str]:
    return {"PROG_ENV": "development", "DATABASE_URL": audit_database, "REDIS_URL": redis_url,
            "PROG_STATE_DIR": str(tmp_path / "state"), "SECRETS_BACKEND": "file", "SECRETS_DIR": str(secrets_dir),
            "SECRETS_CACHE_TTL_SECONDS": "0"}


async def test_prog_audit_verify_says_intact_or_names_the_first_bad_record(audit_env, own_sessions, signer, own_db):
    seqs = await append(own_sessions, 2)
    await checkpoint(own_sessions, signer)
    total = await own_db.fetchval("SELECT count(*) FROM audit_log")
    intact = in_thread(run_prog, audit_env, "audit", "verify")
    assert intact.returncode == 0, intact.stderr
    assert intact.stdout.strip().count("\n") == 0
    assert intact.stdout.startswith(f"audit log intact: {total} records, last checkpoint at record {seqs[-1]}")
    assert "signature valid" in intact.stdout

    original = await own_db.fetchval("SELECT details::text FROM audit_log WHERE seq = $1", seqs[0])
    async with own_db.transaction():  # committed, so the command sees it; put back below
        await own_db.execute("SET LOCAL session_replication_role = replica")
        await own_db.execute("""UPDATE audit_log SET details = '{"n": 1000}' WHERE seq = $1""", seqs[0])
    try:
        tampered = in_thread(run_prog, audit_env, "audit", "verify")
    finally:
        async with own_db.transaction():
            await own_db.execute("SET LOCAL session_replication_role = replica")
            await own_db.execute("UPDATE audit_log SET details = $2::json WHERE seq = $1", seqs[0], original)
    assert tampered.returncode == 1, tampered.stdout
    assert tampered.stderr.strip().count("\n") == 0
    assert tampered.stderr.startswith(f"audit log tampered: record {seqs[0]}: its content does not match its hash")
    assert in_thread(run_prog, audit_env, "audit", "verify").returncode == 0


async def test_prog_audit_export_writes_json_lines_that_verify_elsewhere(audit_env, own_sessions, own_db, tmp_path):
    seqs = await append(own_sessions, 2, action="test.exported")
    since = await own_db.fetchval("SELECT occurred_at FROM audit_log WHERE seq = $1", seqs[0])
    output = tmp_path / "audit.jsonl"
    result = in_thread(run_prog, audit_env, "audit", "export", "--since", since.isoformat(), "--output", str(output))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["seq"] for line in lines][:2] == seqs and "exported" in result.stderr
    assert all(line["occurred_at"] >= since.isoformat() for line in lines)
    for line in lines:  # every column is there: the export verifies without the database
        row = {**line, "occurred_at": datetime.fromisoformat(line["occurred_at"])}
        assert audit.record_hash(row) == line["hash"]
    everything = in_thread(run_prog, audit_env, "audit", "export")
    assert everything.returncode == 0
    assert len(everything.stdout.splitlines()) == await own_db.fetchval("SELECT count(*) FROM audit_log")
    bad = in_thread(run_prog, audit_env, "audit", "export", "--since", "yesterday")
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr


async def test_prog_audit_purge_keeps_the_chain_verifiable(audit_env, own_sessions, own_db):
    seqs = await append(own_sessions, 3)
    cutoff = await own_db.fetchval("SELECT occurred_at FROM audit_log WHERE seq = $1", seqs[1])
    unsaid = in_thread(run_prog, audit_env, "audit", "purge")
    assert unsaid.returncode == 2 and "AUDIT_RETENTION_DAYS" in unsaid.stderr
    kept = in_thread(run_prog, {**audit_env, "AUDIT_RETENTION_DAYS": "30"}, "audit", "purge")
    assert kept.returncode == 0 and "nothing purged" in kept.stdout, kept.stderr
    purged = in_thread(run_prog, audit_env, "audit", "purge", "--before", cutoff.isoformat())
    assert purged.returncode == 0, purged.stderr
    assert f"(up to record {seqs[0]})" in purged.stdout
    assert await own_db.fetchval("SELECT min(seq) FROM audit_log") == seqs[1]
    [note] = await records(own_db, audit.PURGED, actor_label=audit.cli_actor().label)
    assert note["details"]["through_seq"] == seqs[0]
    verdict = in_thread(run_prog, audit_env, "audit", "verify")
    assert verdict.returncode == 0 and verdict.stdout.startswith("audit log intact"), verdict.stderr


# -- the API -------------------------------------------------------------------------------------------------


def as_role(signing_key: str, role: str) -> dict[str, str]:
    return bearer(mint(signing_key, uuid.uuid4(), role=role))


async def test_the_audit_api_is_for_operators_and_admins(users, signing_key):
    for path in ("/v1/admin/audit", "/v1/admin/audit/verify"):
        assert_problem(await users.get(path), 401, "unauthenticated")
        body = assert_problem(await users.get(path, headers=as_role(signing_key, "user")), 403, "forbidden")
        assert "admin or operator" in body["detail"]
    for role in ("operator", "admin"):
        page = await users.get("/v1/admin/audit", params={"limit": 1}, headers=as_role(signing_key, role))
        assert page.status_code == 200, page.text
        assert len(page.json()["records"]) <= 1
        verdict = await users.get("/v1/admin/audit/verify", headers=as_role(signing_key, role))
        assert verdict.status_code == 200 and verdict.json()["ok"] is True, verdict.text
        assert set(verdict.json()) == {"ok", "checked", "first_bad_seq", "reason", "last_checkpoint"}


async def test_the_audit_api_pages_newest_first_and_filters(users, db, signing_key):
    email = await verified_user(users, db)
    for _ in range(3):
        assert (await login(users, email)).status_code == 200
    operator = as_role(signing_key, "operator")
    first = (await users.get("/v1/admin/audit", params={"actor": email, "limit": 2}, headers=operator)).json()
    assert [r["action"] for r in first["records"]] == ["auth.login", "auth.login"]
    assert first["records"][0]["seq"] > first["records"][1]["seq"]
    assert first["next_before"] == first["records"][1]["seq"]
    rest = (await users.get("/v1/admin/audit", params={"actor": email, "limit": 2, "before": first["next_before"]},
                            headers=operator)).json()
    assert [r["action"] for r in rest["records"]] == ["auth.login"] and rest["next_before"] is None
    user_id = first["records"][0]["actor_id"]
    by_target = (await users.get("/v1/admin/audit", params={"target": f"user:{user_id}", "action": "auth.*"},
                                 headers=operator)).json()["records"]
    assert len(by_target) == 3 and {r["target_id"] for r in by_target} == {user_id}
    none = (await users.get("/v1/admin/audit", params={"actor": email, "action": "tenant.*"}, headers=operator))
    assert none.json() == {"records": [], "next_before": None}


async def test_the_checkpoint_job_signs_new_records(serve_app, make_settings, db, signing_key):
    from prognetwork.users.app import create_app

    users = await serve_app(create_app(make_settings("user-service", AUDIT_CHECKPOINT_SECONDS="0.2")))
    email = await verified_user(users, db)
    assert (await login(users, email)).status_code == 200
    [signed_in] = await records(db, "auth.login", actor_label=email)
    key = load_key(signing_key)

    async def signed() -> int | None:
        return await db.fetchval("SELECT max(seq) FROM audit_checkpoints WHERE key_id = $1 AND seq >= $2",
                                 key.kid, signed_in["seq"])

    await eventually_async(signed, timeout=20, what="a checkpoint over the sign-in")
    verdict = (await users.get("/v1/admin/audit/verify", headers=as_role(signing_key, "admin"))).json()
    assert verdict["ok"] and verdict["last_checkpoint"]["verified"] is True, verdict


# -- what real requests leave behind ---------------------------------------------------------------------


async def test_sign_ins_and_failed_sign_ins_are_audited_without_the_password(users, db):
    email = await verified_user(users, db)
    user_id = await db.fetchval("SELECT id FROM users WHERE email = $1", email)
    request_id = f"audit-{uuid.uuid4().hex}"
    ok = await users.post("/v1/auth/login", json={"email": email, "password": PASSWORD},
                          headers={"X-Request-ID": request_id})
    assert ok.status_code == 200
    [signed_in] = await records(db, "auth.login", request_id=request_id)
    assert (signed_in["actor_id"], signed_in["actor_label"], signed_in["actor_role"]) == (user_id, email, "user")
    assert (signed_in["target_type"], signed_in["target_id"]) == ("user", str(user_id))
    assert signed_in["client_ip"] == "127.0.0.1" and signed_in["outcome"] == "success"

    wrong = "not the password, but close"
    for attempted in (email, unique_email("nobody")):
        request_id = f"audit-{uuid.uuid4().hex}"
        refused = await users.post("/v1/auth/login", json={"email": attempted, "password": wrong},
                                   headers={"X-Request-ID": request_id})
        assert_problem(refused, 401, "invalid-credentials")
        [failed] = await records(db, "auth.login_failed", request_id=request_id)
        assert failed["actor_label"] == "anonymous" and failed["actor_id"] is None
        assert failed["outcome"] == "failure"
        assert failed["details"] == {"email": attempted, "reason": "invalid_credentials"}
        assert failed["target_id"] == (str(user_id) if attempted == email else None)
        assert wrong not in json.dumps(failed, default=str)


async def test_password_resets_and_sessions_ending_are_audited(users, db):
    someone = await person(users, db, "reset")
    await users.post("/v1/auth/password-reset", json={"email": someone.email})
    [requested] = await records(db, "auth.password_reset_requested", target_id=str(someone.user_id))
    assert requested["actor_label"] == "anonymous"
    assert requested["details"] == {"email": someone.email, "link_sent": True}
    payload = await db.fetchval("SELECT payload FROM events WHERE type = 'user.password_reset_requested' "
                                "AND payload->>'email' = $1 ORDER BY seq DESC LIMIT 1", someone.email)
    token = json.loads(payload)["token"]
    assert (await users.post("/v1/auth/password-reset/confirm",
                             json={"token": token, "password": NEW_PASSWORD})).status_code == 204
    [reset] = await records(db, "auth.password_reset", target_id=str(someone.user_id))
    assert reset["actor_label"] == someone.email and reset["details"] == {"sessions_ended": 1}
    trail = json.dumps(await records(db, target_id=str(someone.user_id)), default=str)
    assert token not in trail and NEW_PASSWORD not in trail

    again = await person_with(users, someone.email, NEW_PASSWORD)
    spent = again["refresh_token"]
    assert (await users.post("/v1/auth/refresh", json={"refresh_token": spent})).status_code == 200
    assert_problem(await users.post("/v1/auth/refresh", json={"refresh_token": spent}), 401, "refresh-token-reused")
    [revoked] = await records(db, "auth.session_revoked", target_id=str(someone.user_id))
    assert revoked["actor_label"] == "system" and revoked["details"]["reason"] == "refresh_token_reuse"

    last = await person_with(users, someone.email, NEW_PASSWORD)
    assert (await users.post("/v1/auth/logout", json={"refresh_token": last["refresh_token"]})).status_code == 204
    [logged_out] = await records(db, "auth.logout", target_id=str(someone.user_id))
    assert logged_out["actor_label"] == someone.email


async def person_with(users, email: str, password: str) -> dict:
    response = await login(users, email, password)
    assert response.status_code == 200, response.text
    return response.json()


async def test_membership_changes_are_audited_with_their_tenant(users, db):
    owner = await person(users, db, "owner")
    tenant = await create_tenant(users, owner)
    member = await join(users, db, owner, tenant["id"])
    changed = await users.patch(f"/v1/tenants/{tenant['id']}/members/{member.user_id}", json={"role": "admin"},
                                headers=owner.headers)
    assert changed.status_code == 200
    removed = await users.delete(f"/v1/tenants/{tenant['id']}/members/{member.user_id}", headers=owner.headers)
    assert removed.status_code == 204

    trail = await records(db, tenant_id=uuid.UUID(tenant["id"]))
    assert [(r["action"], r["actor_label"]) for r in trail] == [
        ("tenant.created", owner.email),
        ("tenant.member_invited", owner.email),
        ("tenant.member_joined", member.email),
        ("tenant.member_role_changed", owner.email),
        ("tenant.member_removed", owner.email),
    ]
    created, invited, joined, role_changed, _ = trail
    assert (created["target_type"], created["target_id"]) == ("tenant", tenant["id"])
    assert invited["details"] == {"email": member.email, "role": "member"}
    assert (joined["target_id"], joined["details"]["role"]) == (str(member.user_id), "member")
    assert role_changed["details"] == {"role": "admin", "previous_role": "member"}
    token = (await invitation_event(db, tenant["id"], member.email))["token"]
    assert token not in json.dumps(trail, default=str)


async def test_prog_users_disable_is_audited_as_the_operator_at_the_command_line(users, db, service_env):
    someone = await person(users, db, "disabled")
    result = in_thread(run_prog, service_env, "users", "disable", someone.email)
    assert result.returncode == 0, result.stderr
    [disabled] = await records(db, "user.disabled", target_id=str(someone.user_id))
    assert disabled["actor_label"] == audit.cli_actor().label and disabled["actor_id"] is None
    assert disabled["details"] == {"email": someone.email, "sessions_ended": 1}


# -- billing -------------------------------------------------------------------------------------------------


async def test_checkout_and_subscription_changes_are_audited(billing, db, signing_key):
    tenant, user = uuid.uuid4(), uuid.uuid4()
    request_id = f"audit-{uuid.uuid4().hex}"
    headers = {**bearer(tenant_token(signing_key, user, tenant, "owner")), "X-Request-ID": request_id}
    async with billing.client() as client:
        checkout = await client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=headers)
    assert checkout.status_code == 200, checkout.text
    [started] = await records(db, "billing.checkout_started", tenant_id=tenant)
    assert (started["actor_id"], started["request_id"], started["client_ip"]) == (user, request_id, "127.0.0.1")
    assert started["details"]["plan"] == "pro" and started["details"]["checkout_session_id"]

    billing.fake.pay(checkout.json()["url"])
    changes = await eventually_async(lambda: records(db, "billing.subscription_changed", tenant_id=tenant),
                                     timeout=30, what="the subscription change's audit record")
    first = changes[0]
    assert first["actor_label"] == "system" and (first["target_type"], first["target_id"]) == ("tenant", str(tenant))
    assert first["details"]["plan"] == "pro" and first["details"]["previous_plan"] is None
    assert first["details"]["stripe_event_id"].startswith("evt_")
    assert first["outcome"] == "success"
