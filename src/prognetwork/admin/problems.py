"""The problems the admin console answers with, besides the kit's shared ones (kit.problems).

The console answers people, so these are rendered as pages (app.py), with the same status and
detail a problem+json answer would carry.
"""

from prognetwork.kit.problems import ProblemType

CSRF_REFUSED = ProblemType(403, "csrf-refused", "The form's security token is missing or wrong")
CROSS_SITE_REFUSED = ProblemType(403, "cross-site-refused", "Requests from other sites are refused")
READ_ONLY = ProblemType(403, "read-only", "Your role may look but not act")
NOT_FOUND = ProblemType(404, "not-found", "Not found")
