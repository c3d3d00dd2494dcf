"""What a backup node reports about a backup goes into records and later runs: each value is checked here
before it does (jobs.py for a made backup, sync.py for an imported one)."""

from __future__ import annotations

from vmbackup.domain.facts import layout


def reported_path(value) -> str | None:
    return value if layout.invalid_path(value) is None else None


def reported_checksum(value) -> str | None:
    return value if isinstance(value, str) and layout.DIGEST_RE.fullmatch(value) else None
