"""audit log: who did what to whom, chained by hashes so an edit, deletion or reordering shows

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
