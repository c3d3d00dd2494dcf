# -*- coding: utf-8 -*-
# Copyright: vmbackup developers
# Apache License 2.0 (see LICENSE)
"""What the backup modules share: stream stages, manifests written safely, leftovers of killed runs."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout

PART_MARK = ".part-"


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


def meter_stage(bwlimit: int | None) -> list[str] | None:
    """`pv` counts the bytes (and limits the rate); without pv, mbuffer limits and nothing counts."""
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

