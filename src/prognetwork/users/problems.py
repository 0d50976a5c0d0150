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
