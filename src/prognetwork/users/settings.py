"""The user service's settings: token lifetimes, sign-in protection, links in emails and tenants."""

from __future__ import annotations

from pydantic import Field

from prognetwork.kit.settings import Settings, https_problems


class UsersSettings(Settings):
    # Where links in emails point (the web client).
    app_url: str = Field("http://localhost:3000", alias="APP_URL")
    access_token_ttl_seconds: int = Field(900, alias="ACCESS_TOKEN_TTL_SECONDS", ge=30, le=3600)
    refresh_token_ttl_seconds: int = Field(30 * 86400, alias="REFRESH_TOKEN_TTL_SECONDS", ge=300)
    email_token_ttl_seconds: int = Field(86400, alias="EMAIL_TOKEN_TTL_SECONDS", ge=60)

    # Login throttling (the policy is in README "Sign-in protection"): failures per account from one
    # address or one known device, failures per account from all unknown devices together,
    # attempts per client address, and how long a known device stays known.
    login_failures_per_account: int = Field(5, alias="LOGIN_FAILURES_PER_ACCOUNT", ge=1)
    login_failures_per_account_unknown_devices: int = Field(
        20, alias="LOGIN_FAILURES_PER_ACCOUNT_UNKNOWN_DEVICES", ge=1
    )
    login_failure_window_seconds: int = Field(900, alias="LOGIN_FAILURE_WINDOW_SECONDS", ge=1)
    login_attempts_per_address: int = Field(30, alias="LOGIN_ATTEMPTS_PER_ADDRESS", ge=1)
    login_address_window_seconds: int = Field(300, alias="LOGIN_ADDRESS_WINDOW_SECONDS", ge=1)
    device_token_ttl_seconds: int = Field(90 * 86400, alias="DEVICE_TOKEN_TTL_SECONDS", ge=3600)
    password_reset_ttl_seconds: int = Field(3600, alias="PASSWORD_RESET_TTL_SECONDS", ge=60, le=86400)
    # Registration and password-reset emails to one address per hour (more are dropped silently).
    emails_per_address_per_hour: int = Field(5, alias="EMAILS_PER_ADDRESS_PER_HOUR", ge=1)
    # A registration never verified is deleted after this long (its address is free again before that:
    # registering it anew replaces the unverified account).
    unverified_account_ttl_seconds: int = Field(7 * 86400, alias="UNVERIFIED_ACCOUNT_TTL_SECONDS", ge=3600)
    # How long an invitation to a tenant can be accepted (its link works once).
    invitation_ttl_seconds: int = Field(7 * 86400, alias="INVITATION_TTL_SECONDS", ge=3600, le=30 * 86400)
    # The member limit of a tenant billing never told us about (the free plan's).
    free_plan_seats: int = Field(3, alias="FREE_PLAN_SEATS", ge=1)

    # The audit log (kit/audit.py): a signed checkpoint once this many records, or this many seconds
    # with new records, have gone by since the last; `prog audit purge` keeps this many days.
    audit_checkpoint_records: int = Field(1000, alias="AUDIT_CHECKPOINT_RECORDS", ge=1)
    audit_checkpoint_seconds: float = Field(300.0, alias="AUDIT_CHECKPOINT_SECONDS", gt=0)
    audit_retention_days: int | None = Field(None, alias="AUDIT_RETENTION_DAYS", ge=1)

    def own_problems(self) -> list[str]:
        return https_problems("APP_URL", self.app_url)
