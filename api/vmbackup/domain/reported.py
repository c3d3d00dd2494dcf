"""What a backup node reports about a backup goes into records and later runs: each value is checked here
before it does (jobs.py for a made backup, sync.py for an imported one)."""

from __future__ import annotations

import re

from vmbackup.domain.facts import layout

REPORTED_PATH_RE = re.compile(r"/[A-Za-z0-9_.:@+/-]{1,4095}")


def reported_path(value) -> str | None:
    if isinstance(value, str) and REPORTED_PATH_RE.fullmatch(value) and ".." not in value.split("/"):
        return value
    return None


def reported_checksum(value) -> str | None:
    return value if isinstance(value, str) and layout.DIGEST_RE.fullmatch(value) else None
