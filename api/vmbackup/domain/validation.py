"""Turning the strings clients send into values, with messages that name the field."""

from __future__ import annotations

import random
import re

from croniter import croniter

from vmbackup.domain import errors
from vmbackup.domain.facts import layout

TRUE = {"true", "1", "yes", "on"}
FALSE = {"false", "0", "no", "off"}
DESC_FORBIDDEN = set("<>%$&;'\"")
REQUIRED = "This field is required."


class Fields:
    """Collects per-field errors like the original API ({"field": ["message"]})."""

    def __init__(self, data: dict):
        self.data = data or {}
        self.errors: dict[str, list[str]] = {}

    def fail(self, name: str, message: str) -> None:
        self.errors.setdefault(name, []).append(message)

    def has(self, name: str) -> bool:
        return name in self.data and self.data[name] is not None

    def integer(self, name: str, default=None, required: bool = False, low: int | None = None,
                high: int | None = None, nullable: bool = False):
        if not self.has(name):
            if required:
                self.fail(name, REQUIRED)
            return default
        value = self.data[name]
        if nullable and str(value).strip().lower() in ("", "null", "none"):
            return None
        try:
            number = to_int(value)
        except ValueError:
            self.fail(name, "A valid integer is required.")
            return default
        if low is not None and number < low:
            self.fail(name, "Ensure this value is greater than or equal to %d." % low)
        if high is not None and number > high:
            self.fail(name, "Ensure this value is less than or equal to %d." % high)
        return number

    def boolean(self, name: str, default=None):
        if not self.has(name):
            return default
        try:
            return to_bool(self.data[name])
        except ValueError:
            self.fail(name, "Must be a valid boolean.")
            return default

    def string(self, name: str, default=None, required: bool = False, max_length: int | None = None):
        if not self.has(name) or (required and str(self.data[name]).strip() == ""):
            if required:
                self.fail(name, REQUIRED)
            return default
        value = self.data[name]
        if not isinstance(value, (str, int, float)):
            self.fail(name, "Not a valid string.")
            return default
        value = str(value)
        if max_length is not None and len(value) > max_length:
            self.fail(name, "Ensure this field has no more than %d characters." % max_length)
        return value

    def raise_if_any(self) -> None:
        if self.errors:
            raise errors.ValidationFailed(self.errors)


def to_int(value) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not re.fullmatch(r"[-+]?[0-9]{1,20}", text):
        raise ValueError(value)
    return int(text)


def to_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(value)


def is_uuid(value) -> bool:
    return isinstance(value, str) and layout.UUID_RE.fullmatch(value) is not None


def is_pool_name(value) -> bool:
    return layout.invalid_pool(value) is None


CRON_FIELD = r"[0-9A-Za-z*/,?-]{1,64}"
CRON_RE = re.compile(r"%s( +%s){4}" % (CRON_FIELD, CRON_FIELD))


def valid_schedule(schedule: str) -> bool:
    """Five cron fields separated by spaces (no other whitespace), that croniter accepts."""
    return CRON_RE.fullmatch(schedule) is not None and croniter.is_valid(schedule)


def check_desc(fields: Fields, desc: str | None) -> None:
    if desc and DESC_FORBIDDEN & set(desc):
        fields.fail("desc", "Enter a valid value: none of %s are allowed." % " ".join(sorted(DESC_FORBIDDEN)))


def check_definition_name(name: str) -> None:
    if layout.invalid_definition(name):
        raise errors.ValidationFailed({"name": ["Enter a valid name: at most 8 letters, digits, '.', '_' or '-', "
                                                "starting with a letter or digit."]})


PREDEFINED = {"hourly": ("{M} * * * *", 24), "daily": ("{M} {H} * * *", 30),
              "weekly": ("{M} {H} * * {D}", 12), "monthly": ("{M} {H} {D} * *", 6)}


def predefined_defaults(name: str) -> tuple[str, int] | None:
    """Schedule and retention for a predefined name, with the minute/hour/day drawn once."""
    if name not in PREDEFINED:
        return None
    template, retention = PREDEFINED[name]
    day = random.randint(1, 28) if name == "monthly" else random.randint(0, 6)
    return template.format(M=random.randint(0, 59), H=random.randint(0, 23), D=day), retention


def order_by(value: str | None, allowed: list[str], default: str) -> list[tuple[str, bool]]:
    """Parse `order_by` (comma-separated, '-' for descending) or refuse it with 412."""
    text = value if value not in (None, "") else default
    keys = []
    parts = str(text).split(",", len(allowed))  # more parts than fields: one repeats, the rest is not split
    for part in parts:
        part = part.strip()
        field, descending = (part[1:], True) if part.startswith("-") else (part, False)
        if field not in allowed or field in (k for k, _ in keys):
            # Danube's words, also for a field given twice (a client may match them)
            raise errors.PreconditionFailed("Invalid order_by; Possible sort fields are: %s" % ", ".join(allowed))
        keys.append((field, descending))
    return keys


def sort(items: list[dict], keys: list[tuple[str, bool]]) -> list[dict]:
    """Stable multi-key sort; None sorts first."""
    for field, descending in reversed(keys):
        items.sort(key=lambda item, f=field: (item.get(f) is not None, item.get(f) if item.get(f) is not None else 0),
                   reverse=descending)
    return items
