"""Time as the API writes it (the collection's one format: UTC, ISO 8601 to the millisecond with a `Z`) and
backup names' stamps."""

from __future__ import annotations

import datetime

from vmbackup.domain.facts import BACKUP_TIME_FORMAT, layout


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def iso(when: datetime.datetime) -> str:
    return layout.utc_stamp(when)


def parse(text: str | None) -> datetime.datetime | None:
    """The time of a stamp written by iso() or by a node (0 to 6 decimals), to the microsecond."""
    return layout.parse_stamp(text) if text else None


def backup_name(definition: str, when: datetime.datetime) -> str:
    return "%s-%s" % (definition, when.strftime(BACKUP_TIME_FORMAT))
