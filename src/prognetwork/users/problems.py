"""The problems the user service answers with, besides the kit's shared ones."""

from prognetwork.kit.problems import ProblemType

INVALID_VERIFICATION_LINK = ProblemType(
    400, "invalid-verification-link", "The verification link is not valid"
)
VERIFICATION_PASSWORD_MISMATCH = ProblemType(
    400, "verification-password-mismatch", "Not the password chosen at registration"
)
INVALID_RESET_LINK = ProblemType(400, "invalid-reset-link", "The password reset link is not valid")
INVALID_CREDENTIALS = ProblemType(401, "invalid-credentials", "The email or password is incorrect")
INVALID_REFRESH_TOKEN = ProblemType(401, "invalid-refresh-token", "The refresh token is not valid")
REFRESH_TOKEN_REUSED = ProblemType(401, "refresh-token-reused", "The refresh token was already used")
EMAIL_NOT_VERIFIED = ProblemType(403, "email-not-verified", "The email address is not verified")
ACCOUNT_DISABLED = ProblemType(403, "account-disabled", "The account is disabled")
UNKNOWN_USER = ProblemType(404, "unknown-user", "No such account")
TOO_MANY_ATTEMPTS = ProblemType(429, "too-many-attempts", "Too many login attempts")

# Tenants. A tenant the caller is not a member of does not exist as far as the caller can tell:
# the same 404 as a tenant that does not exist, never a 403 that would confirm it.
TENANT_NOT_FOUND = ProblemType(404, "tenant-not-found", "No such tenant")
FORBIDDEN = ProblemType(403, "forbidden", "Your role in this tenant does not allow this")
MEMBER_NOT_FOUND = ProblemType(404, "member-not-found", "No such member of this tenant")
# Unknown, used, expired or addressed to someone else: alike, so a token reveals nothing.
INVITATION_NOT_FOUND = ProblemType(404, "invitation-not-found", "No such invitation")
ALREADY_MEMBER = ProblemType(409, "already-a-member", "Already a member of this tenant")
LAST_OWNER = ProblemType(409, "last-owner", "A tenant keeps at least one owner")
SEAT_LIMIT_REACHED = ProblemType(409, "seat-limit-reached", "Every seat of the tenant's plan is taken")
TOO_MANY_INVITATIONS = ProblemType(429, "too-many-invitations", "Too many invitations to this address")

# The platform admin API (`/v1/admin/…`): the caller's platform role (the token's `role`), not a
# tenant role.
LAST_ADMIN = ProblemType(409, "last-admin", "The platform keeps at least one enabled admin")
ALREADY_VERIFIED = ProblemType(409, "already-verified", "The account's address is already verified")
TOO_MANY_EMAILS = ProblemType(429, "too-many-emails", "Too many emails to this address")
