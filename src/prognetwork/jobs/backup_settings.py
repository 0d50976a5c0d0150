"""The backup job's settings: the kit's shared ones (DATABASE_URL, PROG_STATE_DIR…) plus where
backups go, how many are kept and where their metrics are pushed. S3 itself (region, endpoint,
KMS key) is configured in `storage.StorageSettings`."""

from __future__ import annotations

from pydantic import Field, SecretStr

from prognetwork.kit.settings import Settings


class BackupSettings(Settings):
    # A directory or s3://bucket/prefix. None: `backups/` in the state folder (development).
    backup_target: str | None = Field(None, alias="BACKUP_TARGET")
    backup_keep_daily: int = Field(7, alias="BACKUP_KEEP_DAILY", ge=1)
    backup_keep_weekly: int = Field(4, alias="BACKUP_KEEP_WEEKLY", ge=0)
    backup_keep_monthly: int = Field(12, alias="BACKUP_KEEP_MONTHLY", ge=0)
    # The server `verify` creates its scratch database on (CREATEDB needed). None: DATABASE_URL's.
    backup_verify_database_url: SecretStr | None = Field(None, alias="BACKUP_VERIFY_DATABASE_URL")
    # Where the PostgreSQL client tools are looked for first (before /usr/lib/postgresql/<major>/bin).
    backup_pg_bin_dir: str | None = Field(None, alias="BACKUP_PG_BIN_DIR")
    # None: metrics are not pushed (a log line says so).
    pushgateway_url: str | None = Field(None, alias="PUSHGATEWAY_URL")

    @property
    def target_location(self) -> str:
        return self.backup_target or str(self.state_dir / "backups")

    @property
    def verify_server_dsn(self) -> str:
        if self.backup_verify_database_url is None:
            return self.database_dsn
        return Settings(DATABASE_URL=self.backup_verify_database_url.get_secret_value()).database_dsn

    def own_problems(self) -> list[str]:
        if not (self.backup_target or "").startswith("s3://"):
            return ["BACKUP_TARGET must be an s3://bucket/prefix location outside development"]
        return []
