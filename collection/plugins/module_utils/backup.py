# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the backup modules share: stream stages, manifests written safely, leftovers of killed runs."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout
from ansible_collections.vmbackup.zfs.plugins.module_utils.pipeline import PipelineError

PART_MARK = ".part-"


class JobFailed(Exception):
    """A backup module's job did not happen; the message says why, `extra` what the module reports with it."""

    def __init__(self, msg: str, **extra):
        super().__init__(msg)
        self.extra = extra


class Interrupted(Exception):
    """The module was asked to stop (SIGTERM/SIGINT); cleanup runs, then it fails."""


def stop_on_signals() -> None:
    """Turn SIGTERM, SIGINT and SIGHUP into an exception so that cleanup code runs."""
    def handler(signum, frame):
        raise Interrupted("interrupted by signal %d" % signum)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, handler)


def utc_now() -> str:
    """ISO 8601 UTC with a Z, the API's format for `created`."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def meter_stage(bwlimit: int | None, count: bool = True) -> list[str] | None:
    """`pv` counts the bytes (and limits the rate); without pv, mbuffer limits and nothing counts.

    With `count=False` and no `bwlimit` there is no stage at all: pv costs a few percent of throughput.
    """
    if not bwlimit and not count:
        return None
    if shutil.which("pv"):
        argv = ["pv", "-n", "-b", "-i", "1"]
        if bwlimit:
            argv += ["-L", str(int(bwlimit))]
        return argv
    if bwlimit and shutil.which("mbuffer"):
        return ["mbuffer", "-q", "-m", "16M", "-r", str(int(bwlimit))]
    if bwlimit:
        raise RuntimeError("bwlimit needs pv or mbuffer on the backup node; install one of them")
    return None


def tee_stage(path: str) -> list[str]:
    """Write the stream to `path` and pass it on. mbuffer writes in large blocks (tee's 8 KiB writes
    are one FUSE round trip each on zfs-fuse, several times slower)."""
    if shutil.which("mbuffer"):
        return ["mbuffer", "-q", "-s", "128k", "-m", "16M", "-o", path, "-o", "-"]
    return ["tee", path]


def checksum_stage() -> list[str]:
    """sha256 of stdin, printed as `<hex> ...`; openssl's is faster than coreutils' where there is no SHA-NI."""
    if shutil.which("openssl"):
        return ["openssl", "dgst", "-sha256", "-r"]
    return ["sha256sum"]


def compress_stage(compression: str) -> list[str] | None:
    entry = layout.COMPRESSION[compression]
    if entry.get("parallel") and shutil.which(entry["parallel"][0]):
        return list(entry["parallel"])
    return list(entry["compress"]) if entry["compress"] else None


def decompress_stage(compression: str) -> list[str] | None:
    entry = layout.COMPRESSION[compression]
    return list(entry["decompress"]) if entry["decompress"] else None


def metered_bytes(stage) -> int | None:
    """The last count the meter stage (pv) printed: its total at the end."""
    if stage is None or stage.argv[0] != "pv":
        return None
    numbers = [w for w in stage.stderr.split() if w.isdigit()]
    return int(numbers[-1]) if numbers else None


def write_json_atomic(path: str, data: dict) -> None:
    """Write JSON so that a crash leaves the old file or the new one, never half of one."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = "%s%s%d" % (path, PART_MARK, os.getpid())
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(folder)


def run_stream(pipeline, progress_file: str | None, total: int | None, failure: type = JobFailed,
               capture: bool = False):
    """Run a stream pipeline, keeping `progress_file` (bytes counted by its meter stage) up to date;
    a failed stage raises `failure` carrying every stage's report."""
    report = None
    if progress_file and pipeline.stage("meter") is not None:
        def report(line: str) -> None:
            if line.isdigit():
                write_progress(progress_file, int(line), total)
        write_progress(progress_file, 0, total)
    try:
        return pipeline.run(capture=capture, on_progress=report, progress_stage="meter")
    except PipelineError as err:
        raise failure("transfer failed: %s" % err, stages=pipeline.report()) from err


def write_progress(path: str, sent: int, total: int | None) -> None:
    """Replace the progress file: bytes sent so far and the expected total (or null)."""
    tmp = "%s%s%d" % (path, PART_MARK, os.getpid())
    with open(tmp, "w") as handle:
        json.dump({"bytes": sent, "total": total, "updated": utc_now()}, handle)
    os.replace(tmp, path)


def fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_parts(folder: str) -> list[str]:
    """Delete `*.part-<pid>` files left by runs that were killed (their pid no longer runs)."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for entry in os.listdir(folder):
        if PART_MARK not in entry:
            continue
        pid = entry.rsplit(PART_MARK, 1)[1]
        if pid.isdigit() and not _running(int(pid)):
            os.unlink(os.path.join(folder, entry))
            removed.append(os.path.join(folder, entry))
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_manifest(path: str) -> dict | None:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def sha256_of(path: str) -> str:
    """sha256 of a file, read by sha256sum (no data through Python)."""
    import subprocess
    out = subprocess.run(["sha256sum", path], capture_output=True, text=True, check=True).stdout
    return out.split()[0]


def backup_properties(backup: str, definition: str | None, vm_uuid: str, hostname: str | None,
                      disk_id: int, created: str, kind: str) -> dict[str, str]:
    """The user properties that mark a snapshot as a vmbackup backup."""
    props = {layout.PROP_BACKUP: backup, layout.PROP_VM_UUID: vm_uuid,
             layout.PROP_DISK_ID: str(disk_id), layout.PROP_CREATED: created, layout.PROP_TYPE: kind}
    if definition:
        props[layout.PROP_DEFINITION] = definition
    if hostname:
        props[layout.PROP_HOSTNAME] = hostname
    return props


# -- restore, prune and listing ----------------------------------------------------------------
from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import (  # noqa: E402
    dataset_exists,
    snapshots_below,
)

# The snapshot properties that say which backup a snapshot is (set by backup_properties()).
BACKUP_PROPERTIES = (layout.PROP_BACKUP, layout.PROP_DEFINITION, layout.PROP_VM_UUID, layout.PROP_HOSTNAME,
                     layout.PROP_DISK_ID, layout.PROP_CREATED, layout.PROP_TYPE)


def ignore_signals() -> None:
    """From here on SIGTERM/SIGINT/SIGHUP wait: a cleanup or a commit must not stop halfway."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def mounted_at(node, dataset: str) -> str | None:
    """Where a filesystem is mounted, or None when it is missing or not mounted (nothing is mounted here)."""
    if not dataset_exists(node, dataset):
        return None
    values = node.get([dataset], ["mountpoint", "mounted"])[dataset]
    return values.get("mountpoint") if values.get("mounted") == "yes" else None


def _iso_of_epoch(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _disk_id(value, disk: int) -> int:
    return int(value) if str(value).isdigit() else disk + 1


def dataset_backups(node, zpool: str) -> list[dict]:
    """The dataset backups in `zpool`, oldest first: one item per snapshot below <zpool>/backups/ds
    (kept-aside datasets included), plus manifests whose snapshot is gone (with a `problem`)."""
    root = layout.dataset_backup_root(zpool)
    if not dataset_exists(node, root):
        return []
    manifest_mount = mounted_at(node, layout.manifest_root(zpool))
    items, seen = [], set()
    for snap in snapshots_below(node, root, BACKUP_PROPERTIES + ("referenced", "used")):
        parsed = layout.backup_dataset_leaf(snap.dataset.rsplit("/", 1)[-1])
        if snap.dataset == root or parsed is None:
            continue  # not a VM disk's backup dataset
        vm_uuid, disk, aside = parsed
        props = {k: (None if v == "-" else v) for k, v in snap.properties.items()}
        name = props[layout.PROP_BACKUP] or snap.name
        item = {"name": name, "vm_uuid": vm_uuid, "hostname": props[layout.PROP_HOSTNAME], "disk": disk,
                "disk_id": _disk_id(props[layout.PROP_DISK_ID], disk), "definition": props[layout.PROP_DEFINITION],
                "created": props[layout.PROP_CREATED] or _iso_of_epoch(snap.creation),
                "size": int(props["referenced"] or 0), "type": "dataset", "path": snap.full, "checksum": None,
                "dataset": snap.dataset, "snapshot": snap.name, "guid": snap.guid, "createtxg": snap.createtxg,
                "referenced": int(props["referenced"] or 0), "used": int(props["used"] or 0),
                "kept_aside": aside, "manifest": None, "problem": None}
        if props[layout.PROP_BACKUP] is None:
            item["problem"] = "the snapshot has no vmbackup properties: not made by vmbackup, or not finished"
        if manifest_mount:
            path = layout.dataset_manifest_path(manifest_mount, vm_uuid, disk, name)
            manifest = read_manifest(path) if os.path.exists(path) else None
            if manifest is not None:
                item["manifest"] = path
                if isinstance(manifest.get("size"), int):
                    item["size"] = manifest["size"]  # the bytes sent, as the backup reported them
                seen.add(path)
        items.append(item)
    if manifest_mount:
        items += _orphan_dataset_manifests(manifest_mount, seen)
    return items


def _orphan_dataset_manifests(manifest_mount: str, seen: set) -> list[dict]:
    """Manifests of dataset backups whose snapshot no longer exists."""
    orphans = []
    folder = os.path.join(manifest_mount, "ds")
    for leaf in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        parsed = layout.backup_dataset_leaf(leaf)
        if parsed is None:
            continue
        vm_uuid, disk, _aside = parsed
        for entry in sorted(os.listdir(os.path.join(folder, leaf))):
            path = os.path.join(folder, leaf, entry)
            if not entry.endswith(".json") or PART_MARK in entry or path in seen:
                continue
            manifest = read_manifest(path) or {}
            orphans.append({
                "name": manifest.get("backup") or entry[:-len(".json")], "vm_uuid": vm_uuid,
                "hostname": manifest.get("hostname"), "disk": disk,
                "disk_id": _disk_id(manifest.get("disk_id"), disk), "definition": manifest.get("definition"),
                "created": manifest.get("created"), "size": manifest.get("size"), "type": "dataset",
                "path": (manifest.get("target") or {}).get("snapshot"), "checksum": None, "dataset": None,
                "snapshot": None, "guid": None, "createtxg": None, "kept_aside": False, "manifest": path,
                "problem": "manifest without snapshot: the backup's data is gone from this node"})
    return orphans


def file_backups(node, zpool: str) -> list[dict]:
    """The file backups in `zpool`, oldest first: each file with its manifest; a file without manifest
    or a manifest without file is listed with a `problem`."""
    mount = mounted_at(node, layout.file_backup_root(zpool))
    if mount is None:
        return []
    items = []
    for vm_uuid in sorted(os.listdir(mount)):
        if not layout.UUID_RE.match(vm_uuid) or not os.path.isdir(os.path.join(mount, vm_uuid)):
            continue
        for disk_dir in sorted(os.listdir(os.path.join(mount, vm_uuid))):
            if not (disk_dir.startswith("disk") and disk_dir[4:].isdigit()) or \
                    not os.path.isdir(os.path.join(mount, vm_uuid, disk_dir)):
                continue
            items += _file_backups_of_disk(os.path.join(mount, vm_uuid, disk_dir), vm_uuid.lower(), int(disk_dir[4:]))
    return sorted(items, key=lambda i: (i["created"] or "", i["name"]))


def _file_backups_of_disk(folder: str, vm_uuid: str, disk: int) -> list[dict]:
    entries = [e for e in os.listdir(folder) if PART_MARK not in e]
    files = [e for e in entries if layout.backup_of_file(e)]
    manifests = [e for e in entries if e.endswith(".json") and layout.backup_of_file(e[:-len(".json")])]
    items = []
    for entry in sorted(set(files) | {m[:-len(".json")] for m in manifests}):
        path = os.path.join(folder, entry)
        manifest_path = layout.file_manifest_path(path)
        has_file, has_manifest = entry in files, entry + ".json" in manifests
        manifest = read_manifest(manifest_path) if has_manifest else None
        data = manifest or {}
        created = data.get("created")
        if created is None and has_file:
            created = _iso_of_epoch(int(os.path.getmtime(path)))
        item = {"name": data.get("backup") or layout.backup_of_file(entry), "vm_uuid": vm_uuid,
                "hostname": data.get("hostname"), "disk": disk, "disk_id": _disk_id(data.get("disk_id"), disk),
                "definition": data.get("definition"), "created": created,
                "size": os.path.getsize(path) if has_file else data.get("size"), "type": "file", "path": path,
                "checksum": data.get("checksum"), "compression": layout.compression_of_file(path),
                "manifest": manifest_path if has_manifest else None, "problem": None}
        if not has_file:
            item["problem"] = "manifest without file: the backup's data is gone from this node"
        elif not has_manifest:
            item["problem"] = "file without manifest: its checksum cannot be verified"
        elif manifest is None:
            item["problem"] = "the manifest cannot be read"
        items.append(item)
    return items


def find_backup_files(mount: str, vm_uuid: str, disk: int, backup: str) -> list[str]:
    """The files of a file backup that exist, whatever their compression (normally one)."""
    folder = layout.file_backup_dir(mount, vm_uuid, disk)
    paths = [os.path.join(folder, layout.file_backup_name(backup, c)) for c in layout.COMPRESSION]
    return [p for p in paths if os.path.isfile(p)]
