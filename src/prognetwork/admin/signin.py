"""Signing in, staying signed in, and signing out — the operator's tokens never leave the server.

Sign-in goes through the user service's API (via the gateway); the access token it returns is
verified with the issuer's public keys (kit.jwks) before any claim is read, and only the platform
roles `admin` and `operator` are admitted: anyone else's fresh session is signed out again at once.
`Operator` is the signed-in person for one request: it calls the gateway with their access token,
refreshing the pair shortly before it expires (or when the gateway refuses it) under the session's
refresh lock, and re-reads the role from every new token, so a demoted operator is out at once.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from prognetwork.admin.gateway import ApiError, Gateway
from prognetwork.admin.sessions import Session, SessionStore
from prognetwork.admin.settings import ROLES
from prognetwork.kit.jwks import Jwks
from prognetwork.kit.tokens import InvalidToken

log = structlog.get_logger("prognetwork.admin.signin")
REFRESH_BEFORE_SECONDS = 60  # refresh an access token this long before it expires
REFRESH_WAIT_SECONDS = 10.0  # how long a request waits for another one's refresh
# A refresh answered with these means the session is over (revoked, reused, disabled, unknown).
REFUSED = frozenset({400, 401, 403, 404, 422})


class SignInRefused(Exception):
    """Sign-in did not succeed: `message` says why, for the person at the form."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class SessionEnded(Exception):
    """The session's tokens stopped working (signed out elsewhere, disabled, demoted, expired)."""


LOGIN_REFUSALS = {
    "invalid-credentials": "The email or password is incorrect.",
    "account-disabled": "This account is disabled.",
    "email-not-verified": "This account's email address is not verified yet.",
}


class Auth:
    """What signing in and refreshing need: the gateway, the issuer's keys and the session store."""

    def __init__(self, gateway: Gateway, jwks: Jwks, sessions: SessionStore, http: Any) -> None:
        self.gateway = gateway
        self.jwks = jwks
        self.sessions = sessions
        self.http = http

    async def claims(self, access_token: str) -> dict[str, Any]:
        """The claims of an access token the issuer signed, or InvalidToken."""
        return await self.jwks.verify(access_token, self.http)

    async def sign_in(self, email: str, password: str) -> tuple[str, Session]:
        """A new session (its cookie value and itself), or SignInRefused."""
        try:
            tokens = await self.gateway.call(
                "POST", "/api/v1/auth/login", body={"email": email, "password": password}
            )
        except ApiError as exc:
            if exc.kind in LOGIN_REFUSALS:
                raise SignInRefused(LOGIN_REFUSALS[exc.kind], 401 if exc.status == 401 else 403) from None
            if exc.status in (401, 403, 422, 400):
                raise SignInRefused("The email or password is incorrect.", 401) from None
            raise SignInRefused(exc.message, 503 if exc.unavailable else exc.status) from None
        try:
            claims = await self.claims(tokens["access_token"])
        except (InvalidToken, KeyError, TypeError) as exc:
            log.warning("login answered with a token that does not verify", error=str(exc))
            raise SignInRefused(
                "Signing in failed: the platform's token could not be verified.", 503
            ) from None
        role = str(claims.get("role") or "user")
        if role not in ROLES:
            await self._logout(tokens.get("refresh_token"), tokens["access_token"])
            raise SignInRefused(
                "This console is only for platform administrators and operators; "
                f"your account's role is “{role}”, so it cannot sign in here.",
                403,
            )
        session = Session(
            user_id=str(claims["sub"]),
            email=str(claims.get("email") or email),
            role=role,
            access_token=tokens["access_token"],
            refresh_token=tokens["refresh_token"],
            access_expires_at=float(claims["exp"]),
        )
        return await self.sessions.create(session), session

    async def sign_out(self, session: Session) -> None:
        await self._logout(session.refresh_token, session.access_token)
        await self.sessions.delete(session)

    async def _logout(self, refresh_token: object, access_token: str) -> None:
        """End the session at the user service (the gateway wants the access token on this route;
        the refresh token in the body names the session)."""
        if not isinstance(refresh_token, str):
            return
        try:
            await self.gateway.call(
                "POST", "/api/v1/auth/logout", token=access_token, body={"refresh_token": refresh_token}
            )
        except ApiError as exc:
            # The session is forgotten here either way; the refresh token expires on its own.
            log.warning("logout through the API failed", status=exc.status, kind=exc.kind)

    async def refresh(self, session: Session) -> Session:
        """`session` with a new token pair (saved), or SessionEnded. Never two refreshes of one
        session at once: a refresh token works once."""
        spent = session.refresh_token
        async with self.sessions.refresh_lock(session, REFRESH_WAIT_SECONDS) as held:
            current = await self.sessions.reload(session)
            if current is None:
                raise SessionEnded("the session was signed out")
            if current.refresh_token != spent or not held:
                # Another request refreshed meanwhile (or is still at it: its result, or the old pair).
                if current.access_expires_at - time.time() <= 0:
                    raise SessionEnded("the session could not be refreshed")
                return current
            try:
                tokens = await self.gateway.call(
                    "POST", "/api/v1/auth/refresh", body={"refresh_token": spent}
                )
                claims = await self.claims(tokens["access_token"])
            except ApiError as exc:
                if exc.status not in REFUSED:
                    raise  # an outage or throttling: the session stays, this request fails
                await self.sessions.delete(current)
                raise SessionEnded(exc.detail or "the session could not be refreshed") from None
            except (InvalidToken, KeyError, TypeError) as exc:
                await self.sessions.delete(current)
                raise SessionEnded(f"the refreshed token does not verify ({exc})") from None
            current.access_token = tokens["access_token"]
            current.refresh_token = tokens["refresh_token"]
            current.access_expires_at = float(claims["exp"])
            current.role = str(claims.get("role") or "user")
            if current.role not in ROLES:
                await self.sign_out(current)
                raise SessionEnded(f"the account's role is now {current.role}")
            await self.sessions.save(current)
            return current


class Operator:
    """The signed-in person of one request, calling the platform as themselves."""

    def __init__(self, auth: Auth, session: Session) -> None:
        self.auth = auth
        self.session = session

    async def fresh_token(self) -> str:
        if self.session.access_expires_at - time.time() < REFRESH_BEFORE_SECONDS:
            self.session = await self.auth.refresh(self.session)
        return self.session.access_token

    async def call(
        self,
        method: str,
        path: str,
        params: dict[str, str | int] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        token = await self.fresh_token()
        try:
            return await self.auth.gateway.call(method, path, token=token, params=params, body=body)
        except ApiError as exc:
            if exc.status != 401:
                raise
        # Refused although not yet expired: refreshed once, then the answer stands.
        self.session = await self.auth.refresh(self.session)
        try:
            return await self.auth.gateway.call(
                method, path, token=self.session.access_token, params=params, body=body
            )
        except ApiError as exc:
            if exc.status == 401:
                await self.auth.sessions.delete(self.session)
                raise SessionEnded(exc.detail) from None
            raise

    async def get(self, path: str, **params: str | int | None) -> Any:
        return await self.call("GET", path, {k: v for k, v in params.items() if v is not None and v != ""})


class SignInRequired(Exception):
    """No session (or it ended): the person is sent to the sign-in page."""
