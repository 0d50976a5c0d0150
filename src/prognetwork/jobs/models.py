"""The batch jobs' own tables: where each run has got to, and what the usage report wrote."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, Date, DateTime, Index, String, Table, Uuid, func

from prognetwork.kit.db import Base

# One row per run of a job (job, run key): the position its last committed chunk reached,
# advanced in the same transaction as that chunk's own writes, so a run resumes exactly there.
job_checkpoints = Table(
    "job_checkpoints",
    Base.metadata,
    Column("job", String(100), primary_key=True),
    Column("run_key", String(200), primary_key=True),
    Column("position", BigInteger, nullable=False, server_default="0"),
    # running, stopped (SIGTERM: resumes when started again), done
    Column("state", String(20), nullable=False, server_default="running"),
    # What the run was started with (e.g. retention's bound), so a resumed run does the same work.
    Column("params", JSON, nullable=False),
    Column("chunks", BigInteger, nullable=False, server_default="0"),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Events per tenant, per type, per UTC day (jobs/usage_report.py); kept after retention has
# removed the events themselves.
usage_daily = Table(
    "usage_daily",
    Base.metadata,
    Column("day", Date, primary_key=True),
    Column("tenant_id", Uuid, primary_key=True),
    Column("type", String(200), primary_key=True),
    Column("events", BigInteger, nullable=False),
    Index("ix_usage_daily_tenant_id_day", "tenant_id", "day"),
)
