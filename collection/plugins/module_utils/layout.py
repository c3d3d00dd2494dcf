# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Names and places: what a valid ZFS name is, where backups live, how files are compressed.

Each fact here has no other home; modules, playbooks (through the report filters) and the API import it
from this file. Every pattern ends in \\Z and is matched with re.fullmatch: `$` would let a trailing
newline through.
"""

from __future__ import annotations

import datetime
import re

# ZFS component names: no leading '-' (it would read as an option), no '..', no shell metacharacters.
_COMPONENT = r"[A-Za-z0-9][A-Za-z0-9_.:-]*"
DATASET_RE = re.compile(r"^%s(/%s)*\Z" % (_COMPONENT, _COMPONENT))
SNAPSHOT_NAME_RE = re.compile(r"^%s\Z" % _COMPONENT)
POOL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]*\Z")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
# A backup definition name as the API allows it, and a backup name made from it.
DEFINITION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,7}\Z")
BACKUP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,7}-[0-9]{8}_[0-9]{6}\Z")
BACKUP_TIME_FORMAT = "%Y%m%d_%H%M%S"
# Times in records, manifests, snapshot properties and results: ISO 8601 UTC to the millisecond with a Z, as the
# API writes `created` (2013-10-14T13:37:01.123Z). Read with 0 to 6 decimals: older manifests have 0 or 6.
STAMP_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z\Z")
# A host name as RFC 1123 has it: dot-separated labels of letters, digits and inner hyphens, 63 each, 253 in all.
HOSTNAME_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
# A word a node reports of a VM (its brand, its state): lower-case letters, digits, '_' or '-'.
WORD_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
# An absolute path a node reports (a backup file, a guest agent's socket): no shell or glob characters.
PATH_RE = re.compile(r"^/[A-Za-z0-9_.:@+/-]{1,4095}\Z")
# The pool of the backups (a definition's zpool, a backup node's vmbackup_zpool) and of the VM disks (a compute
# node's vmbackup_pool) where none is named: SmartOS's, as in the original API.
DEFAULT_POOL = "zones"
# The compute node's VM disks: <pool>/<uuid>-disk<N> (KVM/bhyve zvols) or <pool>/<uuid> (OS zones).
DISK_DATASET_RE = re.compile(r"^(?P<pool>[^/]+)/(?P<uuid>[0-9a-fA-F-]{36})(?:-disk(?P<disk>[0-9]+))?\Z")
MAX_NAME = 255

# User properties that vmbackup puts on snapshots; they let backup_info list backups from the nodes.
PROP_PREFIX = "vmbackup:"
PROP_BACKUP = PROP_PREFIX + "backup"
PROP_DEFINITION = PROP_PREFIX + "define"
PROP_VM_UUID = PROP_PREFIX + "vm_uuid"
PROP_HOSTNAME = PROP_PREFIX + "hostname"
PROP_DISK_ID = PROP_PREFIX + "disk_id"
PROP_CREATED = PROP_PREFIX + "created"
PROP_TYPE = PROP_PREFIX + "type"
# On source snapshots: which backup target (<backup host>:<zpool>) received them.
PROP_TARGET = PROP_PREFIX + "target"


def invalid_dataset(name: str) -> str | None:
    """Why `name` is not a dataset name we will pass to zfs, or None if it is one."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if len(name) > MAX_NAME:
        return "is longer than %d characters" % MAX_NAME
    if not DATASET_RE.fullmatch(name) or ".." in name:
        return ("'%s' is not a ZFS dataset name: use pool/path components of letters, digits and "
                "'_.:-', each starting with a letter or digit" % name)
    return None


def invalid_snapshot_name(name: str) -> str | None:
    """Why `name` is not a snapshot name (the part after '@'), or None."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if len(name) > MAX_NAME or not SNAPSHOT_NAME_RE.fullmatch(name) or ".." in name:
        return ("'%s' is not a snapshot name: use letters, digits and '_.:-', starting with a "
                "letter or digit" % name)
    return None


def invalid_pool(name: str) -> str | None:
    """Why `name` is not a pool name, or None."""
    if not isinstance(name, str) or not POOL_RE.fullmatch(name) or len(name) > MAX_NAME:
        return "'%s' is not a pool name: start with a letter, then letters, digits or '_.:-'" % name
    return None


def invalid_hostname(name) -> str | None:
    """Why `name` is not a host name, or None."""
    if not isinstance(name, str) or not 0 < len(name) <= 253 \
            or not all(HOSTNAME_LABEL_RE.fullmatch(label) for label in name.split(".")):
        return "is not a host name (labels of letters, digits and inner '-', 63 each, 253 in all)"
    return None


def invalid_path(path) -> str | None:
    """Why `path` is not an absolute path of plain characters without a '..' component, or None."""
    if not isinstance(path, str) or not PATH_RE.fullmatch(path) or ".." in path.split("/"):
        return "is not an absolute path of letters, digits and '_.:@+/-' without '..'"
    return None


def utc_stamp(when=None) -> str:
    """`when` (a datetime, naive ones taken as UTC, or Unix seconds; now if None) as STAMP_RE writes it."""
    if when is None:
        when = datetime.datetime.now(datetime.timezone.utc)
    elif isinstance(when, (int, float)):
        when = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    when = when.astimezone(datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (when.microsecond // 1000)


def parse_stamp(text: str) -> datetime.datetime:
    """The UTC time of a STAMP_RE text, to the microsecond; ValueError for any other text."""
    if not isinstance(text, str) or not STAMP_RE.fullmatch(text):
        raise ValueError("not an ISO 8601 UTC time such as 2013-10-14T13:37:01.123Z: %r" % (text,))
    when = datetime.datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")
    return when.replace(microsecond=int(text[20:-1].ljust(6, "0") or 0), tzinfo=datetime.timezone.utc)


def invalid_uuid(value: str) -> str | None:
    """Why `value` is not a VM uuid, or None."""
    if not isinstance(value, str) or not UUID_RE.fullmatch(value):
        return "'%s' is not a uuid" % value
    return None


def is_disk_dataset(name: str) -> bool:
    """Whether `name` is a VM disk in the vmbackup layout (`<pool>/<uuid>-disk<N>` or `<pool>/<uuid>`)."""
    return isinstance(name, str) and DISK_DATASET_RE.fullmatch(name) is not None


def invalid_definition(name: str) -> str | None:
    """Why `name` is not a backup definition name as the API allows it, or None."""
    if not isinstance(name, str) or not DEFINITION_RE.fullmatch(name):
        return "'%s' is not a backup definition name (1-8 letters, digits or '._-')" % name
    return None


def invalid_backup_name(name: str) -> str | None:
    """Why `name` is not a backup name `<definition>-YYYYMMDD_HHMMSS`, or None."""
    if not isinstance(name, str) or not BACKUP_NAME_RE.fullmatch(name):
        return "'%s' is not a backup name (<definition>-YYYYMMDD_HHMMSS)" % name
    return None


def backup_kind(value: str) -> str:
    """`dataset` or `file`, from the module option that also takes the API's type codes 1 and 2."""
    return {"1": "dataset", "2": "file"}.get(str(value), value)


def disk_of(dataset: str) -> tuple[str, int]:
    """The VM uuid and 0-based disk number of a VM disk dataset (an OS zone's root is disk 0)."""
    match = DISK_DATASET_RE.fullmatch(dataset) if isinstance(dataset, str) else None
    if not match:
        raise ValueError("'%s' is not a VM disk (expected <pool>/<uuid>-disk<N> or <pool>/<uuid>)" % dataset)
    return match.group("uuid").lower(), int(match.group("disk") or 0)


def disk_leaf(vm_uuid: str, disk: int) -> str:
    """`<uuid>-disk<N>`: the name a VM disk and its dataset backups share."""
    return "%s-disk%d" % (vm_uuid, disk)


def dataset_backup_target(zpool: str, vm_uuid: str, disk: int) -> str:
    """The backup node's dataset that holds one snapshot per dataset backup of a VM disk."""
    return "%s/backups/ds/%s" % (zpool, disk_leaf(vm_uuid, disk))


def file_backup_root(zpool: str) -> str:
    """The dataset under which file backups are written."""
    return "%s/backups/file" % zpool


def manifest_root(zpool: str) -> str:
    """The dataset under which the manifests of dataset backups are written."""
    return "%s/backups/manifests" % zpool


def file_backup_dir(root_mountpoint: str, vm_uuid: str, disk: int) -> str:
    """The folder of a VM disk's file backups, below the mountpoint of file_backup_root()."""
    return "%s/%s/disk%d" % (root_mountpoint.rstrip("/"), vm_uuid, disk)


def file_backup_name(backup: str, compression: str) -> str:
    """`<bkpname>-full.zfs[.ext]`."""
    return "%s-full.zfs%s" % (backup, COMPRESSION[compression]["ext"])


def dataset_manifest_path(root_mountpoint: str, vm_uuid: str, disk: int, backup: str) -> str:
    """Where the manifest of a dataset backup is kept."""
    return "%s/ds/%s/%s.json" % (root_mountpoint.rstrip("/"), disk_leaf(vm_uuid, disk), backup)


def file_manifest_path(backup_file: str) -> str:
    """Where the manifest of a file backup is kept: beside it."""
    return backup_file + ".json"


# Compression of file backups. The API's codes 0-3 map to the first four; zstd and lz4 are ours.
# Each entry names the command that compresses stdin to stdout, the one that reverses it, and the
# file extension by which a restore recognises it. Fast levels: a backup window is short.
COMPRESSION = {
    "none": {"ext": "", "compress": None, "decompress": None},
    "gzip": {"ext": ".gz", "compress": ["gzip", "-1", "-c"], "decompress": ["gzip", "-d", "-c"],
             "parallel": ["pigz", "-1", "-c"]},
    "bzip2": {"ext": ".bz2", "compress": ["bzip2", "-c"], "decompress": ["bzip2", "-d", "-c"]},
    "xz": {"ext": ".xz", "compress": ["xz", "-1", "-T0", "-c"], "decompress": ["xz", "-d", "-c"]},
    "zstd": {"ext": ".zst", "compress": ["zstd", "-1", "-T0", "-q", "-c"],
             "decompress": ["zstd", "-d", "-q", "-c"]},
    "lz4": {"ext": ".lz4", "compress": ["lz4", "-1", "-q", "-c"], "decompress": ["lz4", "-d", "-q", "-c"]},
}
API_COMPRESSION = {"0": "none", "1": "gzip", "2": "bzip2", "3": "xz"}
COMPRESSION_CHOICES = sorted(API_COMPRESSION) + sorted(COMPRESSION)


def compression_name(value) -> str:
    """Normalise an API code (0-3) or a name to a key of COMPRESSION."""
    value = str(value).strip().lower()
    name = API_COMPRESSION.get(value, value)
    if name not in COMPRESSION:
        raise ValueError("compression must be one of %s, not '%s'" % (", ".join(COMPRESSION_CHOICES), value))
    return name


def compression_of_file(path: str) -> str:
    """The compression of a backup file, from its extension."""
    for name, entry in COMPRESSION.items():
        if entry["ext"] and path.endswith(".zfs" + entry["ext"]):
            return name
    if path.endswith(".zfs"):
        return "none"
    raise ValueError("'%s' is not a backup file (expected .zfs with an optional %s)"
                     % (path, ", ".join(e["ext"] for e in COMPRESSION.values() if e["ext"])))


# send.py keeps a backup dataset whose chain broke aside as `<target>-aside-<time>`; its snapshots
# are still backups of that disk, so listing, restore and prune look there too.
DATASET_ASIDE_MARK = "-aside-"
# A restore receives the backup as `<target>-restore-<time>-new`; once it is complete, the target disk is
# renamed `<target>-restore-<time>`, the new one takes its name, and the old one is destroyed.
RESTORE_ASIDE_MARK = "-restore-"
RESTORE_INCOMING_SUFFIX = "-new"
# `<uuid>-disk<N>` or `<uuid>-disk<N>-aside-<time>`: the leaf of a dataset under <zpool>/backups/ds.
BACKUP_DATASET_LEAF_RE = re.compile(r"^(?P<uuid>[0-9a-fA-F-]{36})-disk(?P<disk>[0-9]+)(?P<aside>%s.+)?\Z"
                                    % re.escape(DATASET_ASIDE_MARK))
# `<bkpname>-full.zfs[.ext]`: a file backup, named by file_backup_name().
BACKUP_FILE_RE = re.compile(r"^(?P<backup>.+)-full\.zfs(?P<ext>\.[a-z0-9]+)?\Z")
# Native properties a restore carries over from the old disk to the new one, where set locally, in
# this order (the size before the reservations that depend on it). User properties (with a colon,
# such as vmbackup:hostname) are carried over too. volblocksize is fixed at creation: only compared.
RESTORE_PROPERTIES = ("volsize", "quota", "refquota", "reservation", "refreservation", "recordsize",
                      "compression", "checksum", "copies", "atime", "primarycache", "secondarycache",
                      "logbias", "sync", "snapdir", "readonly", "zoned", "mountpoint", "canmount")


def dataset_backup_root(zpool: str) -> str:
    """The dataset under which every VM disk's backup dataset (and those kept aside) lives."""
    return "%s/backups/ds" % zpool


def backup_dataset_leaf(leaf: str) -> tuple[str, int, bool] | None:
    """(vm uuid, 0-based disk, kept aside?) of a dataset under dataset_backup_root(), or None."""
    match = BACKUP_DATASET_LEAF_RE.fullmatch(leaf)
    if not match:
        return None
    return match.group("uuid").lower(), int(match.group("disk")), match.group("aside") is not None


def backup_of_file(filename: str) -> str | None:
    """The backup name of a file backup's file name (`<bkpname>-full.zfs[.ext]`), or None."""
    match = BACKUP_FILE_RE.fullmatch(filename)
    if not match or not any(e["ext"] == (match.group("ext") or "") for e in COMPRESSION.values()):
        return None
    return match.group("backup")


def restore_aside_name(target: str, stamp: str) -> str:
    """Where a restore keeps the old disk during the swap, until the new one is in its place and complete."""
    return "%s%s%s" % (target, RESTORE_ASIDE_MARK, stamp)


def restore_incoming_name(target: str, stamp: str) -> str:
    """Where a restore receives the backup, beside the target disk, which stays as it is until the end."""
    return restore_aside_name(target, stamp) + RESTORE_INCOMING_SUFFIX


# A verify drill restores a backup into a scratch dataset `<parent>/<leaf>-verify-<pid>` and destroys it at the
# end; one whose pid no longer runs was left by a killed drill. On the backup node the parent is
# verify_root(); on a compute node (a read-only clone of a snapshot) it is the VM disk's own parent.
VERIFY_SCRATCH_MARK = "-verify-"
VERIFY_SCRATCH_RE = re.compile(r"^(?P<leaf>[^/]+)%s(?P<pid>[0-9]+)\Z" % re.escape(VERIFY_SCRATCH_MARK))
# A content digest (sha256, hex) as the verify module returns it and takes it back as expected_digest.
DIGEST_RE = re.compile(r"^[0-9a-f]{64}\Z")


def verify_root(zpool: str) -> str:
    """The dataset under which verify drills receive backups into scratch datasets."""
    return "%s/backups/verify" % zpool


def verify_scratch_name(parent: str, leaf: str, pid: int) -> str:
    """The scratch dataset of the drill run by process `pid`."""
    return "%s/%s%s%d" % (parent, leaf, VERIFY_SCRATCH_MARK, pid)


def verify_scratch_pid(name: str) -> int | None:
    """The pid in a scratch dataset's name, or None when `name` is not one."""
    match = VERIFY_SCRATCH_RE.fullmatch(name.rsplit("/", 1)[-1])
    return int(match.group("pid")) if match else None
