"""The kinds of job: what each claims, which playbook it runs, and how its run's result becomes records.

A job's checks (who may, in API.md's order) live in the use cases that start it (backups.py); the queue runs
jobs, calls `apply` when a run ends and writes the task's detail from the outcome with `detail`. Every
backup, a single one or a scheduled batch, is one `backup.yml` run over a list of items, with retention in
the same run.
"""

from __future__ import annotations

from vmbackup.app import sync
from vmbackup.domain import facts
from vmbackup.domain.clock import iso, now
from vmbackup.domain.facts import BackupStatus
from vmbackup.domain.outcome import Outcome, fields, item
from vmbackup.domain.reported import reported_checksum, reported_path
from vmbackup.engine.runner import RunResult
from vmbackup.store.store import Store

Disk = tuple


class Job:
    """A kind of job; subclasses name their playbook, messages, disks and how results are applied."""

    kind = ""
    playbook = ""
    success = failure = ""
    shown = ("name", "disk_id")  # what the detail of a done job says of each backup

    def disks(self, task: dict) -> list[Disk]:
        return [(task["vm_uuid"], task["disk_id"])] if task.get("vm_uuid") else []

    def message(self, task: dict, ok: bool) -> str:
        return self.success if ok else self.failure

    def apply(self, store: Store, task: dict, run: RunResult) -> Outcome:
        raise NotImplementedError

    def detail(self, outcome: Outcome) -> str:
        """The task's detail as the original API writes it: what was done, else why not."""
        if outcome.ok:
            return "; ".join(fields(done, *self.shown) for done in outcome.made)
        return outcome.failed[0]["why"]


class BackupJob(Job):
    """Backups of 1..N disks to one backup node, each pruned to its definition's retention in the run."""

    kind, playbook = "backup", "backup.yml"

    @staticmethod
    def items(task: dict) -> list[dict]:
        return task["items"]

    def disks(self, task: dict) -> list[Disk]:
        return [(i["vm_uuid"], i["disk_id"]) for i in self.items(task)]

    def message(self, task: dict, ok: bool) -> str:
        if len(self.items(task)) == 1:
            return "Backup successfully created" if ok else "Backup failed"
        return "Backups successfully created" if ok else "Backups failed"

    def apply(self, store: Store, task: dict, run: RunResult) -> Outcome:
        items = self.items(task)
        results = run.result.get("backups") if isinstance(run.result.get("backups"), dict) else {}
        made, failed = [], []
        for one in items:
            res = results.get(facts.batch_key(one["vm_uuid"], one["disk_id"], one["bkpname"])) or {}
            done = item(one["vm_uuid"], one["disk_id"], one["bkpname"], one["define"])
            if res.get("ok"):
                store.update_backup(one["vm_uuid"], one["disk_id"], one["bkpname"], made_fields(res))
                pruned = [n for n in res.get("pruned") or [] if isinstance(n, str) and n != one["bkpname"]]
                if pruned:
                    store.delete_backups(one["vm_uuid"], one["disk_id"], pruned)
                made.append(dict(done, pruned=pruned))
            else:
                store.delete_backups(one["vm_uuid"], one["disk_id"], [one["bkpname"]])
                failed.append(dict(done, why=str(res.get("msg") or run.error or run.status)))
        return Outcome(bool(made), made, failed)

    def detail(self, outcome: Outcome) -> str:
        lines = [fields(done, "name", "disk_id", "pruned") for done in outcome.made]
        if len(outcome.made) + len(outcome.failed) == 1:
            return lines[0] if lines else outcome.failed[0]["why"]
        return "; ".join(["made=%d, failed=%d" % (len(outcome.made), len(outcome.failed))] + lines
                         + ["%s: %s" % (undone["name"], undone["why"]) for undone in outcome.failed])


class RestoreJob(Job):
    kind, playbook = "restore", "restore.yml"
    success, failure = "Backup successfully restored", "Restore failed"
    shown = ("name", "target_hostname", "target_disk_id")

    def apply(self, store: Store, task: dict, run: RunResult) -> Outcome:
        b_uuid, b_disk, b_name = task["backup_key"]
        store.update_backup(b_uuid, b_disk, b_name, {"status": BackupStatus.OK})
        restored = item(b_uuid, b_disk, b_name, task.get("define"), target_vm_uuid=task["vm_uuid"],
                        target_hostname=task["hostname"], target_disk_id=task["disk_id"])
        if run.ok:
            return Outcome(True, [restored])
        return Outcome(False, failed=[dict(restored, why=run.error or run.status)])


class DeleteJob(Job):
    kind, playbook = "delete", "delete.yml"

    def message(self, task: dict, ok: bool) -> str:
        many = isinstance(task.get("bkpname"), list) and len(task["bkpname"]) > 1
        if ok:
            return "Backups successfully deleted" if many else "Backup successfully deleted"
        return "Delete failed"

    def apply(self, store: Store, task: dict, run: RunResult) -> Outcome:
        names = task["bkpname"] if isinstance(task["bkpname"], list) else [task["bkpname"]]
        destroyed = names if run.ok else [n for n in run.result.get("destroyed") or [] if n in names]
        store.delete_backups(task["vm_uuid"], task["disk_id"], destroyed)
        kept = [n for n in names if n not in destroyed]
        for name in kept:
            store.update_backup(task["vm_uuid"], task["disk_id"], name, {"status": BackupStatus.OK})

        why = run.error or run.status
        failed = [item(task["vm_uuid"], task["disk_id"], n, None, why=why) for n in kept] or \
            ([] if run.ok else [{"why": why}])
        return Outcome(run.ok, [item(task["vm_uuid"], task["disk_id"], n, None) for n in destroyed], failed)

    def detail(self, outcome: Outcome) -> str:
        if outcome.ok:  # one line for the backups of one disk: name=a,b, disk_id=1
            return fields({"name": [deleted["name"] for deleted in outcome.made],
                           "disk_id": outcome.made[0]["disk_id"]}, "name", "disk_id")
        return super().detail(outcome)


class VerifyJob(Job):
    """A restore drill into scratch space on the backup node (playbooks/verify.yml): the backup's record
    gets when, the outcome, the digest and the duration; the VM and the backup are never touched."""

    kind, playbook = "verify", "verify.yml"
    success, failure = "Backup successfully verified", "Backup verification failed"
    shown = ("name", "disk_id", "digest")

    def apply(self, store: Store, task: dict, run: RunResult) -> Outcome:
        b_uuid, b_disk, b_name = task["backup_key"]
        res = run.result if isinstance(run.result, dict) else {}
        passed = run.ok and res.get("ok") is True and res.get("outcome") == "passed"
        digest = res.get("digest")
        digest = digest if isinstance(digest, str) and facts.layout.DIGEST_RE.fullmatch(digest) else None
        reason = str(res.get("reason") or run.error or run.status)[:500]
        # An encrypted disk's backup is proven without its key: by its raw stream, not its content.
        kind = res.get("digest_kind") if res.get("digest_kind") in ("content", "raw-stream") else None
        drill = {"verify_status": "passed" if passed else "failed", "verify_time": iso(now()),
                 "verify_digest_kind": kind,
                 "verify_duration": _round(res.get("duration")), "verify_reason": None if passed else reason}
        with store.lock:
            if passed:
                drill.update(verified=drill["verify_time"], verify_digest=digest)
                definition = store.get_definition(b_uuid, b_disk, task.get("define") or "")
                if definition is not None:
                    store.save_definition(dict(definition, verified=drill["verified"]))
            store.update_backup(b_uuid, b_disk, b_name, drill)
        drilled = item(b_uuid, b_disk, b_name, task.get("define"))
        return Outcome(passed, [dict(drilled, digest=digest, digest_kind=kind)] if passed else [],
                       [] if passed else [dict(drilled, why=reason)],
                       {"drill": drill, "backup_key": [b_uuid, b_disk, b_name]})

    def detail(self, outcome: Outcome) -> str:
        raw = outcome.ok and outcome.made[0]["digest_kind"] == "raw-stream"
        return super().detail(outcome) + (" (of the raw stream: encrypted, proven without its key)" if raw else "")


class SyncJob(Job):
    """Compare the records with what the backup nodes hold (backup_info); see sync.py."""

    kind, playbook = "sync", "sync.yml"
    success, failure = "Backups successfully synchronized", "Synchronization failed"

    def disks(self, task: dict) -> list[Disk]:
        return []

    def apply(self, store: Store, task: dict, run: RunResult) -> Outcome:
        summary = sync.apply(store, task.get("extravars", {}).get("sync_nodes") or [], run, task.get("started"),
                             adopt=bool(task.get("adopt")), limit=task.get("import_limit") or sync.IMPORT_LIMIT)
        found = summary.found_lists()  # the listeners hear of them too (a sync's LOST backups alert)
        return Outcome(summary.ok, failed=[{"node": node, "why": "could not be listed"} for node in summary.unlisted],
                       facts=found, found=found)

    def detail(self, outcome: Outcome) -> str:
        return sync.detail(outcome.found)


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
