"""Verification emails: from the event log to the outbox or SendGrid, once, with retries."""

from __future__ import annotations

import json
import re
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from prognetwork.kit import db as kit_db
from prognetwork.notifications import service
from prognetwork.notifications.email import SendGridProvider
from prognetwork.notifications.models import EmailMessage
from tests.helpers.accounts import PASSWORD, register, unique_email, verified_user
from tests.helpers.polling import eventually_async
from tests.helpers.problems import assert_problem


async def outbox_for(client, email: str) -> list[dict]:
    response = await client.get("/v1/dev/outbox", params={"to": email})
    assert response.status_code == 200
    return response.json()


async def test_registration_sends_one_verification_email(users, notifications, db):
    email, response = await register(users, name="Grace <b> visit evil.example")
    assert response.status_code == 202
    (message,) = await eventually_async(lambda: outbox_for(notifications, email), what="verification email")
    assert message["to"] == email and message["subject"] == "Verify your ProgNetwork email address"
    assert set(message) >= {"to", "subject", "text", "html", "sent_at"}
    token = re.search(r"token=([\w-]+)", message["text"]).group(1)
    # Nothing the registrant typed reaches an address nobody has proved yet.
    assert "Grace" not in message["text"] + message["html"] and "evil.example" not in message["html"]
    # The link in the email (with the password chosen) verifies the account; the user can then log in.
    verify = {"token": token, "password": PASSWORD}
    assert (await users.post("/v1/auth/verify-email", json=verify)).status_code == 200
    assert (await users.post("/v1/auth/login", json={"email": email, "password": PASSWORD})).status_code == 200
    status = await db.fetchrow("SELECT status, attempts, provider FROM email_messages WHERE recipient = $1", email)
    assert dict(status) == {"status": "sent", "attempts": 1, "provider": "outbox"}


async def test_registering_a_taken_address_emails_its_owner(users, notifications, db):
    email = await verified_user(users, db)
    await eventually_async(lambda: outbox_for(notifications, email), what="verification email")
    _, response = await register(users, email, name="Impostor")
    assert response.status_code == 202
    messages = await eventually_async(
        lambda: _with_count(outbox_for(notifications, email), 2), what="registration-attempted email")
    notice = messages[0]
    assert notice["subject"] == "Someone tried to register with your address"
    assert "/reset-password" in notice["text"] and "Impostor" not in notice["text"] + notice["html"]


async def test_password_reset_emails_a_link_that_works(users, notifications, db):
    email = await verified_user(users, db)
    assert (await users.post("/v1/auth/password-reset", json={"email": email})).status_code == 202
    messages = await eventually_async(lambda: _with_count(outbox_for(notifications, email), 2), what="reset email")
    reset = messages[0]
    assert reset["subject"] == "Reset your ProgNetwork password"
    token = re.search(r"reset-password\?token=([\w-]+)", reset["text"]).group(1)
    assert (await users.post("/v1/auth/password-reset/confirm",
                             json={"token": token, "password": "another fine passphrase"})).status_code == 204
    # An address without an account gets nothing at all.
    nobody = unique_email("nobody")
    assert (await users.post("/v1/auth/password-reset", json={"email": nobody})).status_code == 202
    await eventually_async(lambda: _handled_past(db, nobody), what="the consumer to pass the request")
    assert await outbox_for(notifications, nobody) == []


async def _with_count(messages, count: int):
    found = await messages
    return found if len(found) >= count else None


async def _handled_past(db, email: str) -> bool:
    seq = await db.fetchval("SELECT max(seq) FROM events WHERE payload->>'email' = $1", email)
    position = await db.fetchval("SELECT position FROM consumer_cursors WHERE name = 'notifications.email'")
    return seq is not None and position is not None and position >= seq


async def test_outbox_lists_newest_first_and_filters(users, notifications):
    first, _ = await register(users)
    second, _ = await register(users)
    await eventually_async(lambda: outbox_for(notifications, second), what="second email")
    await eventually_async(lambda: outbox_for(notifications, first), what="first email")
    everything = (await notifications.get("/v1/dev/outbox", params={"limit": 500})).json()
    recipients = [m["to"] for m in everything]
    assert recipients.index(second) < recipients.index(first)
    times = [m["sent_at"] for m in everything]
    assert times == sorted(times, reverse=True)
    assert_problem(await notifications.get("/v1/dev/outbox", params={"limit": 0}), 422)


async def test_redelivered_event_adds_no_second_email(settings, db, users):
    email, _ = await register(users)
    row = await db.fetchrow(
        "SELECT seq, id, type, payload FROM events WHERE type = 'user.email_verification_requested' "
        "AND payload->>'email' = $1", email)
    from prognetwork.kit.events import Event

    event = Event(seq=row["seq"], id=row["id"], type=row["type"], payload=json.loads(row["payload"]))
    engine = kit_db.create_engine(settings.database_dsn)
    sessions = kit_db.sessionmaker(engine)
    try:
        for _ in range(3):  # at-least-once delivery may hand the same event over again
            async with sessions() as session, session.begin():
                await service.handle_event(session, event)
    finally:
        await engine.dispose()
    assert await db.fetchval("SELECT count(*) FROM email_messages WHERE event_id = $1", row["id"]) == 1


class FakeSendGrid:
    """A local HTTP server speaking SendGrid's v3 mail/send, with scripted answers."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.answers: dict[str, list[int]] = {}  # by recipient: other tests' mail may pass through
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                fake.requests.append({"path": self.path, "auth": self.headers["authorization"], "body": body})
                recipient = body["personalizations"][0]["to"][0]["email"]
                script = fake.answers.get(recipient) or [202]
                status = script.pop(0)
                self.send_response(status)
                self.send_header("X-Message-Id", "sg-" + body.get("custom_args", {}).get("message_id", ""))
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sendgrid():
    fake = FakeSendGrid()
    yield fake
    fake.close()


@pytest.fixture
async def staged_message(settings):
    """A pending email in the database, and a session factory to deliver it with."""
    engine = kit_db.create_engine(settings.database_dsn)
    sessions = kit_db.sessionmaker(engine)
    message_id = uuid.uuid4()
    recipient = unique_email("sg")
    async with sessions() as session, session.begin():
        session.add(EmailMessage(id=message_id, event_id=uuid.uuid4(), kind="verify-email", recipient=recipient,
                                 subject="Hello", text="plain", html="<p>html</p>"))
    yield sessions, message_id, recipient
    await engine.dispose()


async def load(sessions, message_id) -> EmailMessage:
    async with sessions() as session:
        return (await session.execute(select(EmailMessage).where(EmailMessage.id == message_id))).scalar_one()


async def make_due(sessions, message_id) -> None:
    async with sessions() as session, session.begin():
        message = await session.get(EmailMessage, message_id)
        message.next_attempt_at = datetime.now(UTC)


async def test_sendgrid_provider_sends_through_the_sdk(notification_settings, secrets_dir, sendgrid, staged_message):
    sessions, message_id, recipient = staged_message
    (secrets_dir / "SENDGRID_API_KEY").write_text("SG.fake-key-for-the-local-fake")
    provider = SendGridProvider(notification_settings.secrets, sendgrid.url)
    await service.deliver_due(sessions, provider, notification_settings)
    message = await load(sessions, message_id)
    assert message.status == "sent" and message.provider == "sendgrid" and message.provider_message_id == f"sg-{message_id}"
    (request,) = [r for r in sendgrid.requests if r["body"]["personalizations"][0]["to"][0]["email"] == recipient]
    assert request["path"] == "/v3/mail/send" and request["auth"] == "Bearer SG.fake-key-for-the-local-fake"
    assert request["body"]["subject"] == "Hello"
    assert {c["type"]: c["value"] for c in request["body"]["content"]} == {"text/plain": "plain", "text/html": "<p>html</p>"}
    assert request["body"]["custom_args"] == {"message_id": str(message_id)}


async def test_transient_failure_is_retried_with_backoff(notification_settings, secrets_dir, sendgrid, staged_message):
    sessions, message_id, recipient = staged_message
    (secrets_dir / "SENDGRID_API_KEY").write_text("SG.fake-key-for-the-local-fake")
    provider = SendGridProvider(notification_settings.secrets, sendgrid.url)
    sendgrid.answers[recipient] = [503]
    await service.deliver_due(sessions, provider, notification_settings)
    failed_once = await load(sessions, message_id)
    assert failed_once.status == "pending" and failed_once.attempts == 1
    assert "503" in failed_once.last_error
    assert failed_once.next_attempt_at > datetime.now(UTC)  # backed off, not retried at once
    await service.deliver_due(sessions, provider, notification_settings)
    assert (await load(sessions, message_id)).attempts == 1  # not due yet
    await make_due(sessions, message_id)
    await service.deliver_due(sessions, provider, notification_settings)
    sent = await load(sessions, message_id)
    assert sent.status == "sent" and sent.attempts == 2


async def test_permanent_failure_is_not_retried(notification_settings, secrets_dir, sendgrid, staged_message):
    sessions, message_id, recipient = staged_message
    (secrets_dir / "SENDGRID_API_KEY").write_text("SG.fake-key-for-the-local-fake")
    sendgrid.answers[recipient] = [400]
    await service.deliver_due(sessions, SendGridProvider(notification_settings.secrets, sendgrid.url), notification_settings)
    message = await load(sessions, message_id)
    assert message.status == "failed" and message.attempts == 1


async def test_gives_up_after_max_attempts(make_settings, secrets_dir, sendgrid, staged_message):
    sessions, message_id, recipient = staged_message
    settings = make_settings("notification-service", EMAIL_MAX_ATTEMPTS="2")
    (secrets_dir / "SENDGRID_API_KEY").write_text("SG.fake-key-for-the-local-fake")
    provider = SendGridProvider(settings.secrets, sendgrid.url)
    sendgrid.answers[recipient] = [500, 500]
    await service.deliver_due(sessions, provider, settings)
    await make_due(sessions, message_id)
    await service.deliver_due(sessions, provider, settings)
    message = await load(sessions, message_id)
    assert message.status == "failed" and message.attempts == 2


async def test_unreachable_sendgrid_is_transient(notification_settings, secrets_dir, staged_message):
    sessions, message_id, _ = staged_message
    (secrets_dir / "SENDGRID_API_KEY").write_text("SG.fake-key-for-the-local-fake")
    from tests.helpers.ports import free_port

    await service.deliver_due(sessions, SendGridProvider(notification_settings.secrets, f"http://127.0.0.1:{free_port()}"), notification_settings)
    message = await load(sessions, message_id)
    assert message.status == "pending" and message.attempts == 1 and "unreachable" in message.last_error


async def test_dev_outbox_does_not_exist_outside_development(serve_app, make_settings, secrets_dir, sendgrid):
    from prognetwork.notifications.app import create_app

    (secrets_dir / "SENDGRID_API_KEY").write_text("SG.fake-key-for-the-local-fake")
    settings = make_settings("notification-service", PROG_ENV="staging", SENDGRID_HOST=sendgrid.url)
    app = create_app(settings)
    client = await serve_app(app)
    assert app.state.runtime.provider.name == "sendgrid"
    assert_problem(await client.get("/v1/dev/outbox", params={"to": "a@example.com"}), 404)


# -- tenants: invitations and failed payments -------------------------------------------------------

async def test_an_invitation_emails_a_link_that_joins_the_tenant(users, notifications, db):
    from tests.helpers.tenants import accept, create_tenant, person

    ada, bob = await person(users, db, "ada"), await person(users, db, "bob")
    tenant = await create_tenant(users, ada, f"Acme <b>Rockets</b> {uuid.uuid4().hex[:6]}")
    invited = await users.post(f"/v1/tenants/{tenant['id']}/invitations", json={"email": bob.email},
                               headers=ada.headers)
    assert invited.status_code == 201

    async def invitation_email():
        return [m for m in await outbox_for(notifications, bob.email) if m["subject"].startswith("You are invited")]

    (message,) = await eventually_async(invitation_email, what="invitation email")
    assert message["subject"] == f"You are invited to join {tenant['name']} on ProgNetwork"
    # The inviter's text is a name here, escaped: it cannot become markup in the message.
    assert "<b>" not in message["html"] and "&lt;b&gt;Rockets&lt;/b&gt;" in message["html"]
    token = re.search(r"/accept-invitation\?token=([\w-]+)", message["text"]).group(1)
    assert (await accept(users, bob, token)).status_code == 201
    kind = await db.fetchval("SELECT kind FROM email_messages WHERE recipient = $1 AND subject = $2",
                             bob.email, message["subject"])
    assert kind == "tenant-invitation"


async def test_a_failed_payment_emails_each_owner_once(users, notifications, db, sessions):
    from prognetwork.kit.events import append
    from tests.helpers.tenants import create_tenant, join, person

    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada)
    bob = await join(users, db, ada, tenant["id"], "owner", "bob")
    admin = await join(users, db, ada, tenant["id"], "admin", "admin")
    async with sessions() as session, session.begin():
        await append(session, "billing.payment_failed",
                     {"tenant_id": tenant["id"], "invoice_id": "in_1", "amount_due": 4200, "currency": "eur"},
                     tenant_id=uuid.UUID(tenant["id"]))

    async def payment_emails(email: str):
        return [m for m in await outbox_for(notifications, email) if m["subject"].startswith("Payment failed")]

    for owner in (ada, bob):
        (message,) = await eventually_async(lambda owner=owner: payment_emails(owner.email), what="payment email")
        assert message["subject"] == f"Payment failed for {tenant['name']} on ProgNetwork"
        assert "42.00 EUR" in message["text"] and f"/billing?tenant={tenant['id']}" in message["text"]
    sent = await db.fetchval(
        "SELECT count(*) FROM email_messages m JOIN events e ON e.id = m.event_id "
        "WHERE e.tenant_id = $1 AND m.kind = 'payment-failed'", uuid.UUID(tenant["id"]))
    assert sent == 2
    assert await payment_emails(admin.email) == []
