"""How a job ended, as data: what it made or changed, what it did not and why.

The task record and its task log line keep it (`outcome`), the metrics count a backup job's failures from
it and the alerts send it. The task's `detail` (the text the original API shows, e.g. `name=daily-...,
disk_id=1`) is written from it for clients and read by nothing of ours: rewording it changes no counter.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Outcome:
    """`made`: one dict per backup made, restored, deleted or proven (`item`'s keys and what the kind adds, e.g.
    `pruned`, `digest`, `target_hostname`); `failed`: one per item not done, with `why` (a failure of the
    whole run that names no item: `why` alone). `found`: what else the job found that the record keeps (a
    sync's lists of LOST, found again and imported backups). `facts` go to the listeners only."""

    ok: bool
    made: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    found: dict = field(default_factory=dict)

    def record(self) -> dict:
        """What the task record and its log line keep."""
        return dict(self.found, made=[dict(item) for item in self.made], failed=[dict(item) for item in self.failed])


def item(vm_uuid: str, disk_id: int, name: str, define: str | None, **more) -> dict:
    """One backup of a job's outcome, by what identifies it (the backup made, restored, deleted or drilled, and
    its disk), with what the kind adds (`more`)."""
    return dict({"vm_uuid": vm_uuid, "disk_id": disk_id, "name": name, "define": define}, **more)


def failed_definitions(task: dict) -> list[tuple[str, int, str]]:
    """(vm uuid, disk_id, definition) of each backup a backup job's task did not make: what the failure
    counter of each definition counts (a failed drill or restore is not a failed backup)."""
    if task.get("kind") != "backup":
        return []
    failed = (task.get("outcome") or {}).get("failed") or []
    return [(item["vm_uuid"], int(item["disk_id"]), item["define"]) for item in failed if isinstance(item, dict)
            and item.get("vm_uuid") and item.get("define") and item.get("disk_id") is not None]


def fields(item: dict, *keys: str) -> str:
    """`key=value, ...` of an item's keys that have a value, as the original API's detail writes them."""
    return ", ".join("%s=%s" % (key, ",".join(map(str, item[key])) if isinstance(item[key], list) else item[key])
                     for key in keys if item.get(key) not in (None, [], ""))
