"""Time as the API writes it: UTC, ISO 8601 with milliseconds and `Z`; backup names' stamps."""

from __future__ import annotations

import datetime

from vmbackup.domain.facts import BACKUP_TIME_FORMAT


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def iso(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (when.microsecond // 1000)


def parse(text: str | None) -> datetime.datetime | None:
    """The time of an ISO 8601 UTC stamp written by iso() or by a node, to the microsecond."""
    if not text:
        return None
    when = datetime.datetime.fromisoformat(text)
    return when.replace(tzinfo=datetime.timezone.utc) if when.tzinfo is None else when


def backup_name(definition: str, when: datetime.datetime) -> str:
    return "%s-%s" % (definition, when.strftime(BACKUP_TIME_FORMAT))
