"""The kinds of job: what each claims, which playbook it runs, and how its run's result becomes records.

A job's checks (who may, in API.md's order) live in the service; the queue runs jobs and calls `apply`
when a run ends. Every backup, a single one or a scheduled batch, is one `backup.yml` run over a list of
items, with retention in the same run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmbackup.app import sync
from vmbackup.domain import facts
from vmbackup.domain.clock import iso, now
from vmbackup.domain.facts import BackupStatus
from vmbackup.domain.reported import reported_checksum, reported_path
from vmbackup.engine.runner import RunResult
from vmbackup.store.store import Store

Disk = tuple


@dataclass
class Outcome:
    """How a job ended, for its task: success or not, and the detail the task log records."""

    ok: bool
    detail: str
    facts: dict = field(default_factory=dict)  # for listeners: e.g. lost=[...] from a sync


class Job:
    """A kind of job; subclasses name their playbook, messages, disks and how results are applied."""

    kind = ""
    playbook = ""
    success = failure = ""

    def disks(self, task: dict) -> list[Disk]:
        return [(task["vm_uuid"], task["disk_id"])] if task.get("vm_uuid") else []

    def message(self, task: dict, ok: bool) -> str:
        return self.success if ok else self.failure

    def apply(self, store: Store, task: dict, run: RunResult) -> Outcome:
        raise NotImplementedError


class BackupJob(Job):
    """Backups of 1..N disks to one backup node, each pruned to its definition's retention in the run."""

    kind, playbook = "backup", "backup.yml"

    @staticmethod
    def items(task: dict) -> list[dict]:
        if task.get("items"):
            return task["items"]
        return [{k: task.get(k) for k in ("vm_uuid", "hostname", "disk_id", "bkpname", "define")}]  # older tasks

    def disks(self, task: dict) -> list[Disk]:
        return [(i["vm_uuid"], i["disk_id"]) for i in self.items(task)]

    def message(self, task: dict, ok: bool) -> str:
        if len(self.items(task)) == 1:
            return "Backup successfully created" if ok else "Backup failed"
        return "Backups successfully created" if ok else "Backups failed"

    def apply(self, store: Store, task: dict, run: RunResult) -> Outcome:
        items = self.items(task)
        results = run.result.get("backups")
        if not isinstance(results, dict):
            one = run.result if len(items) == 1 and run.result.get("name") == items[0]["bkpname"] else None
            results = {facts.batch_key(items[0]["vm_uuid"], items[0]["disk_id"], items[0]["bkpname"]): one} \
                if one else {}
        made, failed, notes, unmade = [], [], [], []
        for item in items:
            res = results.get(facts.batch_key(item["vm_uuid"], item["disk_id"], item["bkpname"])) or {}
            if res.get("ok"):
                store.update_backup(item["vm_uuid"], item["disk_id"], item["bkpname"], made_fields(res))
                pruned = [n for n in res.get("pruned") or [] if isinstance(n, str) and n != item["bkpname"]]
                if pruned:
                    store.delete_backups(item["vm_uuid"], item["disk_id"], pruned)
                made.append(item)
                notes.append("name=%s, disk_id=%s%s" % (item["bkpname"], item["disk_id"],
                                                        ", pruned=%s" % ",".join(pruned) if pruned else ""))
            else:
                store.delete_backups(item["vm_uuid"], item["disk_id"], [item["bkpname"]])
                unmade.append([item["vm_uuid"], item["disk_id"], item["define"]])
                failed.append("%s: %s" % (item["bkpname"], res.get("msg") or run.error or run.status))
        # Which definitions' backups were not made goes on the task as data (`failed_items`): the metrics
        # count it, never the wording of the detail.
        facts_ = {"failed_items": unmade}
        if len(items) == 1:
            return Outcome(bool(made), notes[0] if made else failed[0].split(": ", 1)[1], facts_)
        detail = "made=%d, failed=%d" % (len(made), len(failed))
        return Outcome(bool(made), "; ".join([detail] + notes + failed), facts_)


class RestoreJob(Job):
    kind, playbook = "restore", "restore.yml"
    success, failure = "Backup successfully restored", "Restore failed"

    def apply(self, store: Store, task: dict, run: RunResult) -> Outcome:
        b_uuid, b_disk, b_name = task["backup_key"]
        store.update_backup(b_uuid, b_disk, b_name, {"status": BackupStatus.OK})
        if run.ok:
            return Outcome(True, "name=%s, target_hostname=%s, target_disk_id=%s"
                           % (b_name, task["hostname"], task["disk_id"]))
        return Outcome(False, run.error or run.status)


class DeleteJob(Job):
    kind, playbook = "delete", "delete.yml"

    def message(self, task: dict, ok: bool) -> str:
        many = isinstance(task.get("bkpname"), list) and len(task["bkpname"]) > 1
        if ok:
            return "Backups successfully deleted" if many else "Backup successfully deleted"
        return "Delete failed"

    def apply(self, store: Store, task: dict, run: RunResult) -> Outcome:
        names = task["bkpname"] if isinstance(task["bkpname"], list) else [task["bkpname"]]
        if run.ok:
            store.delete_backups(task["vm_uuid"], task["disk_id"], names)
            return Outcome(True, "name=%s, disk_id=%s" % (",".join(names), task["disk_id"]))
        destroyed = [n for n in run.result.get("destroyed") or [] if n in names]
        store.delete_backups(task["vm_uuid"], task["disk_id"], destroyed)
        for name in set(names) - set(destroyed):
            store.update_backup(task["vm_uuid"], task["disk_id"], name, {"status": BackupStatus.OK})
        return Outcome(False, run.error or run.status)


class VerifyJob(Job):
    """A restore drill into scratch space on the backup node (playbooks/verify.yml): the backup's record
    gets when, the outcome, the digest and the duration; the VM and the backup are never touched."""

    kind, playbook = "verify", "verify.yml"
    success, failure = "Backup successfully verified", "Backup verification failed"

    def apply(self, store: Store, task: dict, run: RunResult) -> Outcome:
        b_uuid, b_disk, b_name = task["backup_key"]
        res = run.result if isinstance(run.result, dict) else {}
        passed = run.ok and res.get("ok") is True and res.get("outcome") == "passed"
        digest = res.get("digest")
        digest = digest if isinstance(digest, str) and facts.layout.DIGEST_RE.fullmatch(digest) else None
        reason = str(res.get("reason") or run.error or run.status)[:500]
        # An encrypted disk's backup is proven without its key: by its raw stream, not its content.
        kind = res.get("digest_kind") if res.get("digest_kind") in ("content", "raw-stream") else None
        fields = {"verify_status": "passed" if passed else "failed", "verify_time": iso(now()),
                  "verify_digest_kind": kind,
                  "verify_duration": _round(res.get("duration")), "verify_reason": None if passed else reason}
        with store.lock:
            if passed:
                fields.update(verified=fields["verify_time"], verify_digest=digest)
                definition = store.get_definition(b_uuid, b_disk, task.get("define") or "")
                if definition is not None:
                    store.save_definition(dict(definition, verified=fields["verified"]))
            store.update_backup(b_uuid, b_disk, b_name, fields)
        detail = "name=%s, disk_id=%s, digest=%s%s" % (
            b_name, b_disk, digest, " (of the raw stream: encrypted, proven without its key)"
            if kind == "raw-stream" else "") if passed else reason
        return Outcome(passed, detail, {"drill": fields, "backup_key": [b_uuid, b_disk, b_name]})


class SyncJob(Job):
    """Compare the records with what the backup nodes hold (backup_info); see sync.py."""

    kind, playbook = "sync", "sync.yml"
    success, failure = "Backups successfully synchronized", "Synchronization failed"

    def disks(self, task: dict) -> list[Disk]:
        return []

    def apply(self, store: Store, task: dict, run: RunResult) -> Outcome:
        summary = sync.apply(store, task.get("extravars", {}).get("sync_nodes") or [], run, task.get("started"),
                             adopt=bool(task.get("adopt")), limit=task.get("import_limit") or sync.IMPORT_LIMIT)
        return Outcome(summary.ok, summary.detail(), {"lost": summary.lost, "found": summary.found,
                                                      "imported": summary.imported})


KINDS = {job.kind: job for job in (BackupJob(), RestoreJob(), DeleteJob(), VerifyJob(), SyncJob())}


def for_task(task: dict) -> Job:
    return KINDS[task.get("kind")]


# What a backup node reports about a backup goes into records and later runs: checked here and in
# vmbackup.domain.reported.


def made_fields(res: dict) -> dict:
    """A made backup's record fields from what its run reported, each checked."""
    return {"status": BackupStatus.OK, "size": _int(res.get("size")), "time": _round(res.get("time")),
            "finished": iso(now()), "file_path": reported_path(res.get("file_path")),
            "checksum": reported_checksum(res.get("checksum"))}


def _int(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _round(value) -> int | None:
    try:
        return int(round(float(value)))
    except (TypeError, ValueError):
        return None
