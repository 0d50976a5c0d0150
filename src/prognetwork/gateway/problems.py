"""The problems the gateway answers with, besides the kit's shared ones.

The gateway has no FastAPI routes for the paths it proxies, so these appear in no OpenAPI
document of its own; a proxied route may answer with any of them on top of what its upstream
service documents.
"""

from prognetwork.kit.problems import ProblemType

INVALID_PATH = ProblemType(400, "invalid-path", "The request path is ambiguous")
INVALID_QUERY = ProblemType(400, "invalid-query", "The query string cannot be passed on")
RATE_LIMITED = ProblemType(429, "rate-limited", "Too many requests")
UPSTREAM_UNAVAILABLE = ProblemType(502, "upstream-unavailable", "The upstream service is unavailable")
RATE_LIMITER_UNAVAILABLE = ProblemType(503, "rate-limiter-unavailable", "Rate limiting is unavailable")
UPSTREAM_TIMEOUT = ProblemType(504, "upstream-timeout", "The upstream service did not answer in time")
