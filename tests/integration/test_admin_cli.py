"""`prog users create` and `prog users set-role`: how the first admin comes to exist, and how a
role changes without the API. Real processes against real PostgreSQL and Redis; audited as the CLI."""

from __future__ import annotations

import getpass
import json
import uuid

from tests.helpers.accounts import PASSWORD, login, register, unique_email
from tests.helpers.platform import audit_records, only_admin, run_prog, with_role
from tests.helpers.polling import eventually_async
from tests.helpers.problems import assert_problem
from tests.helpers.tenants import claims_of, person
from tests.helpers.threads import in_thread


def cli_label() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


async def test_create_makes_a_verified_account_with_its_role(users, db, service_env):
    email = unique_email("first-admin")
    created = in_thread(run_prog, service_env, "users", "create", "--email", email.upper(), "--password", PASSWORD,
                        "--role", "admin", "--name", "Grace Hopper")
    assert created.returncode == 0, created.stderr
    assert email in created.stdout and "admin" in created.stdout
    response = await login(users, email)
    assert response.status_code == 200, response.text
    claims = claims_of(response.json())
    assert claims["role"] == "admin" and claims["email"] == email
    me = (await users.get("/v1/users/me", headers={"Authorization": f"Bearer {response.json()['access_token']}"})).json()
    assert me["name"] == "Grace Hopper" and me["email_verified"] is True
    (record,) = await audit_records(db, claims["sub"], "user.created")
    assert (record["actor_id"], record["actor_label"], record["actor_role"]) == (None, cli_label(), None)
    assert record["details"]["role"] == "admin"
    (event,) = await db.fetch("SELECT payload, private FROM events WHERE type = 'user.created' AND user_id = $1",
                              uuid.UUID(claims["sub"]))
    assert json.loads(event["payload"])["role"] == "admin" and event["private"] is False


async def test_create_asks_for_the_password_when_it_is_not_given(users, service_env):
    email = unique_email("operator")
    created = in_thread(lambda: run_prog(service_env, "users", "create", "--email", email, "--role", "operator",
                                         stdin=f"{PASSWORD}\n{PASSWORD}\n"))
    assert created.returncode == 0, created.stderr
    assert PASSWORD not in created.stdout + created.stderr
    response = await login(users, email)
    assert response.status_code == 200 and claims_of(response.json())["role"] == "operator"
    # The name defaults to the address's local part.
    me = (await users.get("/v1/users/me", headers={"Authorization": f"Bearer {response.json()['access_token']}"})).json()
    assert me["name"] == email.split("@")[0]


async def test_an_address_with_an_account_is_refused_in_one_line(users, db, service_env):
    taken = (await person(users, db, "taken")).email
    unverified, _ = await register(users, unique_email("unverified"))
    for email in (taken, unverified.upper()):
        refused = in_thread(run_prog, service_env, "users", "create", "--email", email, "--password", PASSWORD,
                            "--role", "admin")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert refused.stderr.strip().count("\n") == 0 and email.lower() in refused.stderr
        assert "exists already" in refused.stderr and "set-role" in refused.stderr
    assert await db.fetchval("SELECT role FROM users WHERE email = $1", taken) == "user"


async def test_create_applies_the_registration_rules(db, service_env):
    email = unique_email("rules")
    for args, complaint in (
        (("--email", email, "--password", "too short", "--role", "admin"), "password"),
        (("--email", "not-an-address", "--password", PASSWORD, "--role", "admin"), "email"),
        (("--email", email, "--password", PASSWORD, "--role", "root"), "root"),
    ):
        refused = in_thread(run_prog, service_env, "users", "create", *args)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert complaint in refused.stderr.lower(), refused.stderr
    assert await db.fetchval("SELECT count(*) FROM users WHERE email = $1", email) == 0


async def test_set_role_changes_the_role_and_signs_the_account_out(users, db, service_env):
    target = await person(users, db, "target")
    changed = in_thread(run_prog, service_env, "users", "set-role", target.email.upper(), "operator")
    assert changed.returncode == 0, changed.stderr
    assert "operator" in changed.stdout and target.email in changed.stdout

    async def signed_out():
        response = await users.get("/v1/users/me", headers=target.headers)
        return response if response.status_code == 401 else None

    # The CLI's revocation reaches the service's followed copy when its follower reads the message.
    assert_problem(await eventually_async(signed_out, what="the token refused"), 401, "invalid-token")
    assert claims_of((await login(users, target.email)).json())["role"] == "operator"
    (record,) = await audit_records(db, target.user_id, "user.role_changed")
    assert record["actor_label"] == cli_label() and record["details"]["previous_role"] == "user"
    unknown = in_thread(run_prog, service_env, "users", "set-role", "nobody-here@example.com", "admin")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().count("\n") == 0 and "nobody-here@example.com" in unknown.stderr


async def test_set_role_keeps_the_last_admin(users, db, service_env):
    admin = await with_role(users, db, "admin")
    await only_admin(db, admin)
    refused = in_thread(run_prog, service_env, "users", "set-role", admin.email, "user")
    assert refused.returncode == 1
    assert "last enabled admin" in refused.stderr and refused.stderr.strip().count("\n") == 0
    assert await db.fetchval("SELECT role FROM users WHERE id = $1", admin.user_id) == "admin"
