"""The vulnerabilities the dependency audit accepts, as pip-audit arguments.

Reads the ignore list (.github/pip-audit-ignore.toml) and prints one `--ignore-vuln=ID` line per
entry. Exits 1, naming every problem, when an entry lacks an id, package, reason or expiry date,
has expired, or expires more than MAX_DAYS ahead: an acceptance is reviewed, never forgotten.

    python .github/scripts/pip_audit_ignores.py [IGNORE_FILE] [--today YYYY-MM-DD]
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import tomllib
from pathlib import Path

DEFAULT_FILE = Path(__file__).resolve().parents[1] / "pip-audit-ignore.toml"
MAX_DAYS = 180
FIELDS = ("id", "package", "reason", "expires")
# The advisory ID forms pip-audit reports (PyPI/OSV): PYSEC-2024-1, GHSA-xxxx-xxxx-xxxx, CVE-2024-1234.
ID_PATTERN = re.compile(r"(PYSEC-\d{4}-\d+|GHSA(-[23456789cfghjmpqrvwx]{4}){3}|CVE-\d{4}-\d{4,}|OSV-[\w-]+)")


def accepted(path: Path, today: dt.date) -> tuple[list[str], list[str]]:
    """(accepted advisory IDs, problems) of the ignore list at `path`."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return [], [f"{path}: cannot read: {exc}"]
    problems = [f"{path}: unknown top-level key {key!r} (entries are [[ignore]] tables)"
                for key in data if key != "ignore"]
    entries = data.get("ignore", [])
    if not isinstance(entries, list):
        return [], [*problems, f"{path}: `ignore` must be an array of tables ([[ignore]])"]
    ids: list[str] = []
    for n, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            problems.append(f"{path}: entry {n} is not a table ([[ignore]])")
            continue
        where = f"{path}: entry {n} ({entry.get('id', 'no id')})"
        missing = [field for field in FIELDS if not entry.get(field)]
        if missing:
            problems.append(f"{where}: missing {', '.join(missing)}")
            continue
        unknown = sorted(set(entry) - set(FIELDS))
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(unknown)}")
        if not isinstance(entry["id"], str) or not ID_PATTERN.fullmatch(entry["id"]):
            problems.append(f"{where}: id is not an advisory ID (PYSEC-…, GHSA-…, CVE-…)")
        if not isinstance(entry["reason"], str) or len(entry["reason"].split()) < 3:
            problems.append(f"{where}: reason must say why the vulnerability is accepted")
        expires = entry["expires"]
        if not isinstance(expires, dt.date) or isinstance(expires, dt.datetime):
            problems.append(f"{where}: expires must be a TOML date (expires = 2026-01-31), not {expires!r}")
        elif expires < today:
            problems.append(f"{where}: expired on {expires}: review it, then renew or remove the entry")
        elif expires > today + dt.timedelta(days=MAX_DAYS):
            problems.append(f"{where}: expires {expires}, more than {MAX_DAYS} days ahead")
        ids.append(str(entry["id"]))
    if len(set(ids)) != len(ids):
        problems.append(f"{path}: an advisory is listed twice")
    return ids, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--today", type=dt.date.fromisoformat, default=dt.date.today())
    args = parser.parse_args(argv)
    ids, problems = accepted(args.file, args.today)
    if problems:
        print("pip-audit ignore list refused:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    for vuln_id in ids:
        print(f"--ignore-vuln={vuln_id}")
    print(f"pip-audit ignore list: {len(ids)} accepted", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
