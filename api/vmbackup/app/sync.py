"""The nodes hold the truth: compare the records with what the backup nodes list (playbooks/sync.yml).

For every pool a backup node listed: a record whose data is gone becomes 4 LOST, a LOST one seen again
becomes 1 OK, and a backup found without a record is imported from its manifest and snapshot properties
(original hostname, definition, size, time), so a controller started on an empty data dir finds every
backup again. Pools a node could not list, and nodes that did not answer, change nothing.

A backup node may be in hostile hands too, and its listing is only its word. A record is imported only for
what that node could have made: a snapshot of `<zpool>/backups/ds/<uuid>-disk<N>` or a file in that disk's
folder `.../<uuid>/disk<N>/`, of a VM some compute node reports or that the records already place on that
backup node, `created` not in the future (CLOCK_SKEW allowed), never a second record of a backup held
elsewhere, at most `limit` a node per sync. A forged "newest" backup would otherwise hide a stale
definition, become the drill's target, or block schedules with a future name. Backups of VMs nobody reports
(deleted VMs, a controller rebuilt) are imported when the operator says `adopt`. Each refusal is logged with
the node and the reason.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field

from vmbackup.domain import facts, validation
from vmbackup.domain.clock import iso, now, parse
from vmbackup.domain.facts import BackupStatus
from vmbackup.domain.reported import reported_checksum, reported_path
from vmbackup.engine.runner import RunResult
from vmbackup.store.store import Store

log = logging.getLogger("vmbackup.sync")
GONE = "data is gone"  # backup_info's problem for a manifest whose snapshot or file is gone
CLOCK_SKEW = datetime.timedelta(minutes=5)
IMPORT_LIMIT = 1000  # imports per backup node per sync (serve --sync-import-limit)


@dataclass
class Summary:
    listed: list[str] = field(default_factory=list)     # node:pool listed
    unlisted: list[str] = field(default_factory=list)   # node:pool (or node) that could not be listed
    lost: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    imports: dict = field(default_factory=dict)  # node: how many imported

    @property
    def ok(self) -> bool:
        return bool(self.listed) or not self.unlisted

    def found_lists(self) -> dict:
        """What a sync's task record keeps: each list by its name."""
        return {name: list(getattr(self, name)) for name in LISTS}


LISTS = ("listed", "unlisted", "lost", "found", "imported", "skipped")


def detail(found: dict) -> str:
    """A sync task's detail: each list that has entries, the first 50 of each."""
    parts = ["listed=%s" % (",".join(found.get("listed") or []) or "none")]
    for name in LISTS[1:]:
        values = found.get(name) or []
        if values:
            parts.append("%s=%s" % (name, ",".join(values[:50]) + (",..." if len(values) > 50 else "")))
    return "; ".join(parts)


def present(entry: dict) -> bool:
    return GONE not in str(entry.get("problem") or "")


def imported_record(entry: dict, node: str, zpool: str) -> dict | None:
    """A record for a backup a node lists, every field checked (what a node says is not trusted)."""
    name, vm_uuid, define = entry.get("name"), entry.get("vm_uuid"), entry.get("definition")
    if not (isinstance(name, str) and facts.layout.BACKUP_NAME_RE.fullmatch(name)):
        return None
    if not validation.is_uuid(vm_uuid):
        return None
    if not (isinstance(define, str) and facts.layout.DEFINITION_RE.fullmatch(define)):
        return None
    disk_id, kind = entry.get("disk_id"), facts.TYPE_OF_WORD.get(entry.get("type"))
    if isinstance(disk_id, bool) or not isinstance(disk_id, int) or not 1 <= disk_id <= 64 or kind is None:
        return None
    hostname = entry.get("hostname") if facts.layout.invalid_hostname(entry.get("hostname")) is None \
        else vm_uuid.lower()
    created = entry.get("created") if isinstance(entry.get("created"), str) \
        and facts.layout.STAMP_RE.fullmatch(entry["created"]) else None
    size = entry.get("size") if isinstance(entry.get("size"), int) and entry["size"] >= 0 else None
    return {"hostname": hostname, "vm_uuid": vm_uuid.lower(), "define": define, "name": name, "disk_id": disk_id,
            "type": kind, "node": node, "zpool": zpool, "created": iso(parse(created)) if created else None,
            "status": BackupStatus.OK, "size": size, "time": None,
            "file_path": reported_path(entry.get("path")) if kind == facts.TYPE_FILE else None,
            "note": "", "checksum": reported_checksum(entry.get("checksum")),
            "brand": entry.get("brand") if isinstance(entry.get("brand"), str) and len(entry["brand"]) < 32 else None,
            "disk_size": entry.get("disk_size") if isinstance(entry.get("disk_size"), int) else None,
            "imported": iso(now())}


def refusal(record: dict, entry: dict, store: Store, adopt: bool) -> str | None:
    """Why a listed backup is not imported, or None: what the node could not have made (see the module's
    docstring)."""
    leaf = facts.layout.disk_leaf(record["vm_uuid"], record["disk_id"] - 1)
    path = str(entry.get("path") or "")
    if record["type"] == facts.TYPE_DATASET:
        if path != "%s@%s" % (facts.layout.dataset_backup_target(record["zpool"], record["vm_uuid"],
                                                                  record["disk_id"] - 1), record["name"]):
            return "%s is not a snapshot of %s/backups/ds/%s" % (path[:200], record["zpool"], leaf)
    else:
        folder = "/%s/disk%d/" % (record["vm_uuid"], record["disk_id"] - 1)
        if folder not in path or facts.layout.backup_of_file(path.rsplit("/", 1)[-1]) != record["name"]:
            return "%s is not a backup file in a folder .../%s/disk%d/" % (path[:200], record["vm_uuid"],
                                                                          record["disk_id"] - 1)
    created = parse(record["created"]) if record["created"] else None
    if created is not None and created > now() + CLOCK_SKEW:
        return "created %s is in the future" % record["created"]
    held = store.get_backup(record["vm_uuid"], record["disk_id"], record["name"])
    if held is not None:
        return "a record of it exists on node %s pool %s" % (held.get("node"), held.get("zpool"))
    if store.get_vm(record["vm_uuid"]) is None and not adopt and not any(
            b.get("node") == record["node"] for b in store.backups(vm_uuid=record["vm_uuid"])):
        return "no compute node reports VM %s and no record places it on this node (adopt to import it)" \
            % record["vm_uuid"]
    return None


def apply(store: Store, sync_nodes: list, run: RunResult, started: str | None = None, adopt: bool = False,
          limit: int = IMPORT_LIMIT) -> Summary:
    """Bring the records in line with what the run listed; `started`: records finished after it are
    left alone (their backup ended while the nodes were being listed); `adopt`: import backups of VMs
    that no compute node reports; `limit`: imports per node."""
    summary = Summary()
    listed = run.result.get("nodes") if isinstance(run.result.get("nodes"), dict) else {}
    asked = {n.get("node"): n.get("pools") or [] for n in sync_nodes if isinstance(n, dict)}
    cutoff = parse(started) if started else None
    for node, pools in asked.items():
        answer = listed.get(node)
        if not isinstance(answer, dict):
            summary.unlisted.append(node)
            continue
        for pool in pools:
            entries = answer.get(pool)
            if not isinstance(entries, list):
                summary.unlisted.append("%s:%s" % (node, pool))
                continue
            summary.listed.append("%s:%s" % (node, pool))
            _apply_pool(store, node, pool, [e for e in entries if isinstance(e, dict)], cutoff, summary, adopt,
                        limit)
    for what in ("lost", "found", "imported"):
        if getattr(summary, what):
            log.info("sync: %s %s", what, ", ".join(getattr(summary, what)[:20]))
    return summary


def _apply_pool(store: Store, node: str, pool: str, entries: list[dict], cutoff, summary: Summary,
                adopt: bool = False, limit: int = IMPORT_LIMIT) -> None:
    held = {}
    for entry in entries:
        if present(entry) and isinstance(entry.get("vm_uuid"), str):
            held[(entry["vm_uuid"].lower(), entry.get("disk_id"), entry.get("name"))] = entry
    with store.lock:
        records = [b for b in store.backups() if b.get("node") == node and b.get("zpool") == pool]
        known = {(b["vm_uuid"], b["disk_id"], b["name"]) for b in records}
        for record in records:
            key = (record["vm_uuid"], record["disk_id"], record["name"])
            label = "%s/%s" % (record["hostname"], record["name"])
            if key in held and record["status"] == BackupStatus.LOST:
                store.update_backup(*key, {"status": BackupStatus.OK})
                summary.found.append(label)
            elif key not in held and record["status"] == BackupStatus.OK:
                finished = parse(record.get("finished") or record.get("imported") or record.get("created"))
                if cutoff is not None and finished is not None and finished >= cutoff:
                    continue  # made while the node was being listed
                store.update_backup(*key, {"status": BackupStatus.LOST})
                summary.lost.append(label)
        for key, entry in held.items():
            if key in known:
                continue
            what = str(entry.get("path") or entry.get("name"))[:200]
            record = imported_record(entry, node, pool)
            why = "a field is not what a backup has" if record is None else refusal(record, entry, store, adopt)
            if why is None and summary.imports.get(node, 0) >= limit:
                why = "over the limit of %d imports a node per sync" % limit
            if why is not None:
                log.warning("sync: node %s pool %s: %s not imported: %s", node, pool, what, why)
                summary.skipped.append(what)
                continue
            store.insert_backup(record)
            summary.imports[node] = summary.imports.get(node, 0) + 1
            summary.imported.append("%s/%s" % (record["hostname"], record["name"]))
