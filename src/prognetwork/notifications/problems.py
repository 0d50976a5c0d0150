"""The problems the notification service answers with, besides the kit's shared ones (kit.problems)."""


# The admin API (`/v1/admin/emails`): the caller's platform role (the token's `role`).
