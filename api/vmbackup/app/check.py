"""`vmbackup check`: is every active definition backed up (and verified) as often as its schedule says?

Nagios plugin convention: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; one status line, perfdata after `|`.
Lateness is counted in intervals of the definition's own schedule. The reference is the newest good
(status 1) backup, or the definition's creation when it has none. Its age in intervals is
1 + (now - the first due time after the reference) / (the gap between that due time and the next), so
a backup made on time is less than one interval old until the next one is due, and a schedule with
gaps (weekdays only) is not late over the weekend.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from croniter import croniter

from vmbackup.domain.clock import now, parse
from vmbackup.domain.facts import BackupStatus
from vmbackup.store.store import Store, is_data_dir

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
DAY = 86400.0


@dataclass
class Thresholds:
    warn: float = 1.5                  # intervals
    crit: float = 3.0
    verify_warn_days: float | None = None  # off unless given
    verify_crit_days: float | None = None

    @property
    def verifying(self) -> bool:
        return self.verify_warn_days is not None or self.verify_crit_days is not None


@dataclass
class Finding:
    """One definition's state, why, and its numbers for perfdata."""

    hostname: str
    vm_uuid: str
    definition: str
    disk_id: int
    state: int
    age: float            # seconds since the newest good backup (or the definition's creation)
    interval: float       # seconds between two due times of the schedule
    intervals: float      # lateness in intervals, as the thresholds count
    reasons: list[str] = field(default_factory=list)
    verify_age: float | None = None

    @property
    def label(self) -> str:
        return "%s/%s/%d" % (self.hostname, self.definition, self.disk_id)

    @property
    def key(self) -> tuple:
        return (self.vm_uuid, self.disk_id, self.definition)


def lateness(schedule: str, reference: datetime.datetime, when: datetime.datetime) -> tuple[float, float]:
    """(interval in seconds, age in intervals) of a reference time under a cron schedule, at `when`."""
    times = croniter(schedule, reference)
    first = times.get_next(datetime.datetime)
    second = times.get_next(datetime.datetime)
    interval = max((second - first).total_seconds(), 1.0)
    return interval, 1.0 + (when - first).total_seconds() / interval


def newest_good(backups: list[dict]) -> dict | None:
    good = [b for b in backups if b.get("status") == BackupStatus.OK and parse(b.get("created"))]
    return max(good, key=lambda b: parse(b["created"]), default=None)


def newest_verified(backups: list[dict]) -> dict | None:
    """The backup with the most recent drill, good or not (`verified` is the time of the last good one)."""
    drilled = [b for b in backups if parse(b.get("verified")) or b.get("verify_status")]
    return max(drilled, key=lambda b: b.get("verified") or "", default=None)


def evaluate(store: Store, when: datetime.datetime, thresholds: Thresholds, vm: str | None = None,
             definition: str | None = None) -> list[Finding]:
    """A finding for every active, scheduled definition that the filters (hostname or uuid, name) keep."""
    findings = []
    for item in store.definitions():
        if not item.get("active") or not item.get("schedule"):
            continue
        if vm is not None and vm not in (item["hostname"], item["vm_uuid"]):
            continue
        if definition is not None and item["name"] != definition:
            continue
        backups = [b for b in store.backups(vm_uuid=item["vm_uuid"])
                   if b.get("define") == item["name"] and b.get("disk_id") == item["disk_id"]]
        findings.append(finding(item, backups, when, thresholds))
    return sorted(findings, key=lambda f: (-f.state, f.label))


def finding(item: dict, backups: list[dict], when: datetime.datetime, thresholds: Thresholds) -> Finding:
    """One definition's state from its own backups."""
    good = newest_good(backups)
    reference = parse(good["created"]) if good else parse(item.get("created")) or when
    interval, intervals = lateness(item["schedule"], reference, when)
    result = Finding(item["hostname"], item["vm_uuid"], item["name"], item["disk_id"], OK,
                     (when - reference).total_seconds(), interval, intervals)
    what = "newest good backup" if good else "no backup since the definition was created"
    if intervals > thresholds.crit:
        result.state = CRITICAL
    elif intervals > thresholds.warn:
        result.state = WARNING
    if result.state != OK:
        result.reasons.append("%s %s ago (%.1f intervals of %s)" % (what, duration(result.age), intervals,
                                                                   duration(interval)))
    if thresholds.verifying:
        _verification(result, item, backups, when, thresholds)
    return result


def _verification(result: Finding, item: dict, backups: list[dict], when: datetime.datetime,
                  thresholds: Thresholds) -> None:
    drilled = newest_verified(backups)
    verified = parse(drilled.get("verified")) if drilled else None
    reference = verified or parse(item.get("created")) or when
    result.verify_age = (when - reference).total_seconds()
    state = OK
    if drilled is not None and drilled.get("verify_status") == "failed":
        state = CRITICAL
        result.reasons.append("last restore drill of %s failed" % drilled["name"])
    else:
        days = result.verify_age / DAY
        if thresholds.verify_crit_days is not None and days > thresholds.verify_crit_days:
            state = CRITICAL
        elif thresholds.verify_warn_days is not None and days > thresholds.verify_warn_days:
            state = WARNING
        if state != OK:
            result.reasons.append("%s %s ago" % ("last good restore drill" if verified else
                                                 "never verified; defined", duration(result.verify_age)))
    result.state = max(result.state, state)


def duration(seconds: float) -> str:
    """3d4h, 5h12m, 7m30s: the two largest units."""
    seconds = int(max(seconds, 0))
    parts = [(seconds // 86400, "d"), (seconds % 86400 // 3600, "h"), (seconds % 3600 // 60, "m"), (seconds % 60, "s")]
    while len(parts) > 2 and parts[0][0] == 0:
        parts.pop(0)
    return "".join("%d%s" % part for part in parts[:2])


def report(findings: list[Finding], thresholds: Thresholds, filtered: bool = False) -> tuple[int, str]:
    """The exit code and the status line with perfdata."""
    if not findings:
        if filtered:
            return UNKNOWN, "VMBACKUP UNKNOWN - no active definition matches"
        return OK, "VMBACKUP OK - no active definitions"
    state = max(f.state for f in findings)
    counts = {s: sum(1 for f in findings if f.state == s) for s in (CRITICAL, WARNING, OK)}
    summary = "%d definitions: %d critical, %d warning, %d ok" % (len(findings), counts[CRITICAL], counts[WARNING],
                                                                   counts[OK])
    problems = ["%s %s" % (f.label, "; ".join(f.reasons)) for f in findings if f.state != OK]
    text = summary + (": " + ", ".join(problems[:5]) + (", ..." if len(problems) > 5 else "") if problems else "")
    perf = []
    for f in findings:
        perf.append("'%s age'=%ds;%d;%d;0" % (f.label, f.age, thresholds.warn * f.interval,
                                              thresholds.crit * f.interval))
        if f.verify_age is not None:
            warn = "" if thresholds.verify_warn_days is None else "%d" % (thresholds.verify_warn_days * DAY)
            crit = "" if thresholds.verify_crit_days is None else "%d" % (thresholds.verify_crit_days * DAY)
            perf.append("'%s verify age'=%ds;%s;%s;0" % (f.label, f.verify_age, warn, crit))
    return state, "VMBACKUP %s - %s | %s" % (STATES[state], text.replace("|", "/"), " ".join(perf))


def run(data_dir: str, thresholds: Thresholds, vm: str | None = None, definition: str | None = None,
        when: datetime.datetime | None = None) -> tuple[int, str]:
    """The whole check against a data dir; any error is UNKNOWN (a monitor must never see a traceback)."""
    if not is_data_dir(data_dir):  # Store() would create an empty data dir
        return UNKNOWN, "VMBACKUP UNKNOWN - %s is not a vmbackup data dir" % data_dir
    try:
        findings = evaluate(Store(data_dir), when or now(), thresholds, vm, definition)
    except Exception as err:  # noqa: BLE001 - the plugin convention: anything unexpected is UNKNOWN
        return UNKNOWN, "VMBACKUP UNKNOWN - cannot read %s: %s" % (data_dir, err)
    return report(findings, thresholds, filtered=vm is not None or definition is not None)
