"""The problems the notification service answers with, besides the kit's shared ones: none yet.

Its one route (the development outbox) answers only with the kit's kinds. A kind of its own is
declared here, as a `ProblemType`, and listed in the `responses` of every route that raises it.
"""
