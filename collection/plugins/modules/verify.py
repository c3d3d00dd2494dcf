#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: verify
short_description: Prove a backup by restoring it into scratch space on this backup node and comparing its content
description:
  - A verify drill. With I(mode=drill) (on the backup node) the backup is restored through the same pipeline as
    M(vmbackup.zfs.restore), but into a scratch dataset C(<zpool>/backups/verify/<vm_uuid>-disk<disk>-verify-<pid>)
    of this node, never into a VM disk; its content digest is compared, then the scratch dataset is destroyed.
  - A file backup's sha256 is first checked against its manifest (a damaged file fails the drill before anything
    is received), then the file is received whole (C(zfs receive -u)).
  - A dataset backup's snapshot is sent and received inside this node (C(zfs send | zfs receive -u)).
  - The content digest is the sha256 of the restored data read by a pipeline of streaming tools, never through
    Python, C(tar --sort=name --format=gnu --numeric-owner --mtime=@0 -cf - . | pv | sha256sum) for a filesystem
    and C(dd if=/dev/zvol/... | pv | sha256sum) for a volume, limited by I(bwlimit).
  - It is compared with I(source_digest), the digest of the snapshot of the same name on the compute node (where
    it still exists, computed there by this module with I(mode=digest)), and with I(expected_digest), the digest
    recorded at the backup's last good verification. The guid of the backup (its snapshot, or the snapshot its
    file holds) must be the guid its manifest recorded and I(source_guid).
  - An encrypted disk (native ZFS encryption; its backups are raw streams) is proven without its key, which the
    backup node never has, by the digest of its raw stream instead of its content (C(digest_kind)).
  - With I(mode=digest) (on the compute node) the module only computes the digest and guid of C(source@backup),
    read from C(.zfs/snapshot) where the node has it, else from a read-only clone destroyed at the end; it
    reports C(found=false) when the snapshot is gone (the compute node keeps only the newest one).
  - The drill fails (in the one failure shape) with C(outcome=failed) and a C(reason) when the backup is damaged,
    missing, or differs from its source. Whatever the outcome, SIGTERM included, the scratch dataset is
    destroyed; the backup and the VM disk are only read.
version_added: "0.2.0"
author: vmbackup developers (@vmbackup)
requirements:
  - Python 3.8 or newer on the nodes
  - ZFS on the nodes (OpenZFS 2.x, illumos or zfs-fuse)
  - GNU tar 1.28 or newer (C(tar) or C(gtar)) for filesystems, C(dd) for volumes; C(sha256sum) or C(openssl);
    C(pv) for I(bwlimit) (or C(mbuffer)); the decompressor of a file backup on the backup node
extends_documentation_fragment:
  - vmbackup.zfs.attributes.DRILL
  - vmbackup.zfs.attributes.FAILURE
seealso:
  - module: vmbackup.zfs.restore
    description: Restores a backup into a VM disk, with the same pipeline.
  - module: vmbackup.zfs.backup_info
    description: Lists the backups that can be verified.
options:
  mode:
    description:
      - C(drill) restores the backup into scratch space on this backup node and compares its digest.
      - C(digest) computes the digest and guid of the snapshot I(source)C(@)I(backup) on this (compute) node.
    type: str
    choices: [drill, digest]
    default: drill
  zpool:
    description: The pool on this backup node that holds the backup (I(mode=drill)).
    type: str
  backup:
    description: The backup's name, C(<bkpdef>-YYYYMMDD_HHMMSS); also the name of its snapshot on the compute node.
    type: str
    required: true
  type:
    description: C(dataset) (API type 1) or C(file) (API type 2).
    type: str
    choices: [dataset, file, "1", "2"]
    default: dataset
  vm_uuid:
    description: The uuid of the VM the backup was made of (I(mode=drill)).
    type: str
  disk:
    description: The 0-based number of the backed-up disk, the API's I(disk_id) minus one.
    type: int
    default: 0
  file_path:
    description: The backup file, for file backups; found in the VM disk's folder when not given.
    type: path
  source:
    description: The VM disk on this compute node, C(<pool>/<uuid>-disk<N>) or C(<pool>/<uuid>) (I(mode=digest)).
    type: str
  source_digest:
    description: The digest of the snapshot of the same name on the compute node (what I(mode=digest) returned).
    type: str
  source_guid:
    description: The guid of that snapshot; a backup with another guid fails the drill.
    type: str
  source_snapshot:
    description: That snapshot's name, C(dataset@backup), for the messages.
    type: str
  source_node:
    description: The compute node's name, for the messages.
    type: str
  expected_digest:
    description: The digest recorded at the backup's last good verification; the restored data must have it.
    type: str
  bwlimit:
    description: Rate limit of the restore and of the digest's read, in bytes per second; C(0) means unlimited.
    type: int
    default: 0
  progress_file:
    description: While the backup is received, keep a JSON file here with C(bytes) so far and the expected C(total).
    type: path
notes:
  - Check mode plans only; it finds the backup and says what would be received where and how it would be
    hashed; it reads no data and makes no scratch dataset.
  - Without I(source_digest) and I(expected_digest) there is nothing to compare the content with, and the drill
    fails with that reason (its C(digest) is returned all the same).
  - zfs-fuse (pool version 23) has no volumes and no C(.zfs/snapshot); there the filesystem path runs, with a
    read-only clone on the compute node.
"""

EXAMPLES = r"""
- name: Digest of the source snapshot, on the compute node
  vmbackup.zfs.verify:
    mode: digest
    source: zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0
    backup: daily-20261128_040000
  delegate_to: node01.example.com
  register: source

- name: Restore the backup into scratch space on the backup node and compare
  vmbackup.zfs.verify:
    zpool: backup
    backup: daily-20261128_040000
    vm_uuid: 9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a
    disk: 0
    source_digest: "{{ source.digest | default(omit, true) }}"
    source_guid: "{{ source.guid | default(omit, true) }}"
    source_node: node01.example.com
    bwlimit: 100000000

- name: A file backup whose source snapshot is gone, against the digest of its last verification
  vmbackup.zfs.verify:
    zpool: backup
    backup: weekly-20261122_040000
    type: file
    vm_uuid: 9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a
    expected_digest: 3f0a6ad1c1d7f5a4b1e8a4dc0c1a1b5e9c63f39d4b9e47a3b1d8f0a4c2e6b7d9
"""

RETURN = r"""
ok:
  description: Whether the drill passed (I(mode=drill)); in I(mode=digest) whether a digest was computed.
  returned: always
  type: bool
  sample: true
outcome:
  description: C(passed) or C(failed) (I(mode=drill)); null in check mode and in I(mode=digest).
  returned: always
  type: str
  sample: passed
reason:
  description: Why the drill failed (several reasons joined by C(; )), or what it compared when it passed.
  returned: always
  type: str
  sample: >-
    content differs from the source snapshot zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0@daily-20261128_040000
    on node01: the restored data's sha256 is 5d41..., the source's 7c21...
backup:
  description: The backup's name.
  returned: always
  type: str
  sample: daily-20261128_040000
type:
  description: C(dataset) or C(file).
  returned: always
  type: str
  sample: dataset
source:
  description: The backup snapshot or file the drill restored (I(mode=drill)); the VM disk (I(mode=digest)).
  returned: always
  type: str
  sample: backup/backups/ds/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0@daily-20261128_040000
file_path:
  description: The backup file; null for dataset backups.
  returned: always
  type: str
  sample: /backup/backups/file/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a/disk0/weekly-20261128_040000-full.zfs.zst
checksum_verified:
  description: Whether the backup file's sha256 matched its manifest (false for dataset backups).
  returned: always
  type: bool
  sample: true
found:
  description: I(mode=digest), whether the snapshot exists on this node.
  returned: always
  type: bool
  sample: true
snapshot:
  description: I(mode=digest), the snapshot digested.
  returned: always
  type: str
  sample: zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0@daily-20261128_040000
guid:
  description: The guid of the backup (I(mode=drill), read from the restored copy) or of the snapshot (I(mode=digest)).
  returned: always
  type: str
  sample: "5270349870453413398"
source_guid:
  description: The source snapshot's guid the drill compared with, or null.
  returned: always
  type: str
  sample: "5270349870453413398"
digest:
  description: The sha256 (hex) of the restored data (I(mode=drill)) or of the snapshot (I(mode=digest)).
  returned: always
  type: str
  sample: 7c211433f02071597741e6ff5a8ea34789abbf43ddc5d4e4c8ab3f9f3cb8d2e1
digest_kind:
  description:
    - C(content), the sha256 of the data read back; or C(raw-stream) for an encrypted disk, whose backup node has no
      key, the sha256 of its raw stream (C(zfs send -w)) with the snapshot's name and the stream's running checksums
      left out, the same sent from the compute node or from the drill's scratch copy. The scratch copy was received
      raw, without the key; the guid is compared as for any backup.
  returned: always
  type: str
  sample: content
source_digest:
  description: The source snapshot's digest the drill compared with, or null.
  returned: always
  type: str
  sample: 7c211433f02071597741e6ff5a8ea34789abbf43ddc5d4e4c8ab3f9f3cb8d2e1
expected_digest:
  description: The digest of the last good verification the drill compared with, or null.
  returned: always
  type: str
  sample: null
compared_with:
  description:
    - What the content was compared with, C(source) and/or C(expected); for a file backup of an encrypted disk also
      C(backup), the raw stream's digest recorded in its manifest when the compute node sent it.
  returned: always
  type: list
  elements: str
  sample: [source]
scratch:
  description: The scratch dataset the backup was restored into (or the clone read on a compute node); destroyed.
  returned: always
  type: str
  sample: backup/backups/verify/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0-verify-4242
size:
  description: Bytes received into scratch (I(mode=drill)) or bytes hashed (I(mode=digest)), where the meter counted.
  returned: success
  type: int
  sample: 41843149
duration:
  description: Seconds the drill (or the digest) took.
  returned: always
  type: float
  sample: 6.204
cmd:
  description: The restore pipeline as a shell line (I(mode=digest), the digest pipeline).
  returned: always
  type: str
  sample: >-
    zfs send backup/backups/ds/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0@daily-20261128_040000 | pv -n -b -i 1 |
    zfs receive -u backup/backups/verify/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0-verify-4242
digest_cmd:
  description: The digest pipeline as a shell line.
  returned: always
  type: str
  sample: >-
    tar -C /backup/backups/verify/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0-verify-4242 --sort=name --format=gnu
    --numeric-owner --mtime=@0 --one-file-system -cf - . | pv -n -b -i 1 | sha256sum
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.zfs.plugins.module_utils import backup_source, digest, layout, receive, stream
from ansible_collections.vmbackup.zfs.plugins.module_utils.checks import check_label, check_names, check_path
from ansible_collections.vmbackup.zfs.plugins.module_utils.dataset import Dataset
from ansible_collections.vmbackup.zfs.plugins.module_utils.encryption import RAW_FLAG, encryption_of, is_raw
from ansible_collections.vmbackup.zfs.plugins.module_utils.job import (
    Interrupted,
    JobFailed,
    fail,
    ignore_signals,
    stop_on_signals,
)
from ansible_collections.vmbackup.zfs.plugins.module_utils.pipeline import Pipeline
from ansible_collections.vmbackup.zfs.plugins.module_utils.scratch import Scratch, drop_stale
from ansible_collections.vmbackup.zfs.plugins.module_utils.transfer import Transfer
from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import ZfsError

ERRORS = (JobFailed, ZfsError, OSError, RuntimeError, Interrupted)


class VerifyFailed(JobFailed):
    """The drill could not run, or found the backup bad."""


class Drill(Transfer):
    """One run of the module: the backup restored into scratch space, its digest, the comparison, the cleanup.

    The stream stays on this node (a Transfer whose peer is this node: there is no `source_host`).
    """

    failed = VerifyFailed

    def __init__(self, module: AnsibleModule):
        super().__init__(module, "source")
        self.started = time.monotonic()
        self.scratch: Scratch | None = None
        self.raw = False  # the backup is a raw stream of an encrypted disk: its scratch copy has no key
        self.result.update(ok=False, outcome=None, reason=None, backup=self.p["backup"], type=self.kind,
                           source=None, file_path=None, checksum_verified=False, found=False, snapshot=None,
                           guid=None, source_guid=self.p["source_guid"], digest=None,
                           source_digest=self.p["source_digest"], expected_digest=self.p["expected_digest"],
                           compared_with=[], scratch=None, duration=0.0, digest_cmd="", digest_kind="content")

    # -- the digest of data on this node --------------------------------------------------------
    def raw_digest(self, snapshot: str) -> str:
        """The digest of an encrypted snapshot's raw stream (no key needed); the bytes read are `size`."""
        self.result["digest_kind"] = "raw-stream"
        hashing = digest.raw_pipeline(snapshot, self.p["bwlimit"])
        self.result["digest_cmd"] = str(hashing)
        if self.module.check_mode:
            return ""
        return self.hash(hashing, "raw stream digest")

    def digest(self, kind: str, where: str) -> str:
        """Hash a mounted filesystem or a volume's device; the bytes read are `size`."""
        reader = digest.volume_reader(where) if kind == "volume" else digest.filesystem_reader(where)
        hashing = digest.pipeline(reader, self.p["bwlimit"])
        self.result["digest_cmd"] = str(hashing)
        return self.hash(hashing, "digest")

    @staticmethod
    def hash(hashing, what: str) -> str:
        """Run a digest pipeline; its failure is a failed drill that says which digest failed."""
        try:
            ran = stream.run_stream(hashing, None, None, VerifyFailed, capture=True)
        except VerifyFailed as err:
            raise VerifyFailed("%s failed: %s" % (what, str(err).split(": ", 1)[-1])) from err.__cause__
        return digest.digest_of(ran)

    def source_digest(self) -> None:
        """mode=digest: the digest and guid of source@backup on this (compute) node."""
        disk = self.p["source"]
        snapshot = "%s@%s" % (disk, self.p["backup"])
        self.result.update(source=disk, snapshot=snapshot)
        if not Dataset(self.local, snapshot).exists():
            self.result.update(ok=False, msg="%s is not on this node: no source digest" % snapshot)
            return
        values = self.local.get([snapshot, disk], ["guid", "type", "mountpoint", "mounted"])
        kind = values[disk]["type"]
        self.result.update(found=True, guid=values[snapshot]["guid"])
        if encryption_of(self.local, disk):  # its backups are raw streams: so is what they are compared with
            self.result["digest"] = self.raw_digest(snapshot)
            self.result.update(ok=True, cmd=self.result["digest_cmd"],
                               msg="%s: raw stream sha256 %s" % (snapshot, self.result["digest"]))
            return
        where = None
        if kind == "filesystem" and values[disk].get("mounted") == "yes":
            where = os.path.join(values[disk]["mountpoint"], ".zfs", "snapshot", self.p["backup"])
            where = where if os.path.isdir(where) else None
        if kind == "volume" and os.path.exists(digest.volume_device(snapshot)):
            where = digest.volume_device(snapshot)  # snapdev=visible
        parent, leaf = disk.rsplit("/", 1)
        if where is None:
            self.scratch = Scratch(self.local, parent, leaf)
            self.result["scratch"] = self.scratch.name
        if self.module.check_mode:
            reader = digest.volume_reader(where or "<device>") if kind == "volume" \
                else digest.filesystem_reader(where or "<mountpoint of %s>" % self.result["scratch"])
            self.result["cmd"] = self.result["digest_cmd"] = str(digest.pipeline(reader, self.p["bwlimit"]))
            self.result["msg"] = "would hash %s%s" % (snapshot, " through the read-only clone %s"
                                                      % self.result["scratch"] if self.scratch else "")
            self.scratch = None
            return
        if self.scratch is not None:
            drop_stale(self.local, parent, origin_prefix=disk + "@")
            kind, where = self.scratch.clone_of(snapshot).readable()
        self.result["digest"] = self.digest(kind, where)
        self.result.update(ok=True, cmd=self.result["digest_cmd"],
                           msg="%s: sha256 %s" % (snapshot, self.result["digest"]))

    # -- the drill ------------------------------------------------------------------------------
    def locate(self) -> tuple[list[str], int | None, dict | None]:
        """The backup's stream (a reader command), its expected size and its manifest."""
        p, vm_uuid = self.p, self.p["vm_uuid"].lower()
        if self.kind == "dataset":
            snapshot = backup_source.dataset_snapshot(self.local, p["zpool"], vm_uuid, p["disk"], p["backup"])
            self.result.update(source=snapshot, guid=self.local.get_one(snapshot, "guid"))
            record = backup_source.dataset_manifest(self.local, p["zpool"], vm_uuid, p["disk"], p["backup"])
            self.raw = encryption_of(self.local, snapshot) is not None
            return ["zfs", "send"] + ([RAW_FLAG] if self.raw else []) + [snapshot], \
                int(self.local.get_one(snapshot, "referenced")), record
        path = backup_source.backup_file(self.local, p["zpool"], vm_uuid, p["disk"], p["backup"], p["file_path"])
        self.result.update(source=path, file_path=path)
        record = backup_source.file_manifest(path, p["backup"])
        self.raw = is_raw(record.get("send_flags"))
        if not self.module.check_mode:
            backup_source.check_file(path, record)
            self.result["checksum_verified"] = True
        stream_size = record.get("stream_size")
        return backup_source.file_reader(path), stream_size if isinstance(stream_size, int) else None, record

    def stream_kind(self, record: dict | None) -> str:
        """What the backup's stream must hold: the backup dataset's type, or for a file the source disk's type
        its manifest recorded."""
        if self.kind == "dataset":
            return self.local.get_one(self.result["source"].split("@", 1)[0], "type")
        kind = ((record or {}).get("source") or {}).get("type")
        if kind not in ("volume", "filesystem"):
            raise VerifyFailed("%s: its manifest does not say whether the disk was a volume or a file system "
                               "(source.type), so its stream cannot be received safely; restore it to test it"
                               % self.result["source"])
        return kind

    def run(self) -> None:
        p = self.p
        root = layout.verify_root(p["zpool"])
        reader, total, record = self.locate()
        self.scratch = Scratch(self.local, root, layout.disk_leaf(p["vm_uuid"].lower(), p["disk"]))
        self.result["scratch"] = self.scratch.name
        pipeline = Pipeline().add(reader, "zfs send" if self.kind == "dataset" else reader[0])
        pipeline.add(stream.meter_stage(p["bwlimit"]), "meter")
        kind = self.stream_kind(record)
        pipeline.add(receive.receive_argv(self.local, self.scratch.name, kind, scratch=True), "zfs receive")
        self.result["cmd"] = str(pipeline)
        if self.module.check_mode:
            volume = kind == "volume"
            reader = digest.volume_reader(digest.volume_device(self.scratch.name)) if volume \
                else digest.filesystem_reader("<mountpoint of %s>" % self.scratch.name)
            self.result["digest_cmd"] = str(digest.raw_pipeline(self.scratch.name + "@" + p["backup"], p["bwlimit"])
                                            if self.raw else digest.pipeline(reader, p["bwlimit"]))
            self.result["msg"] = "would receive %s into %s, hash it and compare, then destroy it" % (
                self.result["source"], self.scratch.name)
            self.scratch = None
            return

        if Dataset(self.local, root).exists():
            drop_stale(self.local, root)
        receive.prepare_parent(self.local, root)
        self.transfer(pipeline, total)
        try:
            receive.check(self.local, self.scratch.name, kind, self.result["source"], scratch=True)
        except receive.ReceiveRefused as err:
            raise VerifyFailed(str(err)) from err
        self.result["size"] = stream.metered_bytes(pipeline.stage("meter"))
        received = self.scratch.snapshots()
        self.result["guid"] = received[-1].guid if received else self.result["guid"]
        if self.raw:  # no key here: what it is, is its raw stream, sent again from the scratch copy
            if not received:
                raise VerifyFailed("%s: the raw stream left no snapshot in %s"
                                   % (self.result["source"], self.scratch.name))
            self.result["digest"] = self.raw_digest(received[-1].full)
        else:
            kind, where = self.scratch.readable()
            self.result["digest"] = self.digest(kind, where)
        self.judge(record or {})

    def judge(self, record: dict) -> None:
        """Compare the guid and the digest with what they must be; set outcome and reason."""
        p, problems, digest_now = self.p, [], self.result["digest"]
        what = "raw stream" if self.raw else "content"
        source = p["source_snapshot"] or "%s@%s" % (layout.disk_leaf(p["vm_uuid"].lower(), p["disk"]), p["backup"])
        on = " on %s" % p["source_node"] if p["source_node"] else ""
        recorded = (record.get("source") or {}).get("guid")
        if recorded and str(recorded) != self.result["guid"]:
            problems.append("guid mismatch: the backup's data has guid %s, its manifest recorded %s (the snapshot "
                            "sent)" % (self.result["guid"], recorded))
        if p["source_guid"] and p["source_guid"] != self.result["guid"]:
            problems.append("guid mismatch: the backup's data has guid %s, the source snapshot %s%s has guid %s"
                            % (self.result["guid"], source, on, p["source_guid"]))
        if p["source_digest"]:
            self.result["compared_with"].append("source")
            if p["source_digest"] != digest_now:
                problems.append("%s differs from the source snapshot %s%s: the restored data's sha256 is %s, "
                                "the source's %s" % (what, source, on, digest_now, p["source_digest"]))
        if self.raw and record.get("raw_digest"):  # a file backup: the raw stream as the compute node sent it
            self.result["compared_with"].append("backup")
            if record["raw_digest"] != digest_now:
                problems.append("raw stream differs from the one the compute node sent (its digest in the manifest, "
                                "%s): the restored data's is %s" % (record["raw_digest"], digest_now))
        if p["expected_digest"]:
            self.result["compared_with"].append("expected")
            if p["expected_digest"] != digest_now:
                problems.append("%s differs from the digest recorded at its last good verification: the "
                                "restored data's sha256 is %s, expected %s" % (what, digest_now, p["expected_digest"]))
        if not self.result["compared_with"]:
            problems.append("nothing to compare the content with: no source snapshot %s%s and no expected_digest "
                            "(the restored data's sha256 is %s)" % (source, on, digest_now))
        if problems:
            raise VerifyFailed("; ".join(problems))
        how = "restored into scratch without its key (encrypted, received raw); raw stream" if self.raw \
            else "restored into scratch; content"
        names = {"source": "the source snapshot %s%s" % (source, on),
                 "backup": "the stream the compute node sent (recorded at backup time)",
                 "expected": "the digest of its last good verification"}
        self.result.update(ok=True, outcome="passed", reason="%s sha256 %s matches %s" % (
            how, digest_now, " and ".join(names[c] for c in self.result["compared_with"])))
        self.result["msg"] = "verified %s: %s" % (p["backup"], self.result["reason"])

    # -- cleanup --------------------------------------------------------------------------------
    def drop_scratch(self) -> list[str]:
        """Destroy the scratch dataset, whatever state the drill left it in; signals wait meanwhile."""
        ignore_signals()
        if self.scratch is not None:
            scratch, self.scratch = self.scratch, None
            self.attempt("destroy scratch %s" % scratch, scratch.drop)
        self.result["duration"] = round(time.monotonic() - self.started, 3)
        return self.cleanup


def check_digest(module, option: str, value: str | None) -> None:
    if value is not None and not layout.DIGEST_RE.fullmatch(value):
        fail(module, "%s: '%s' is not a sha256 digest (64 lowercase hex digits)" % (option, value), option=option)


def main() -> None:
    spec = {
        "mode": {"type": "str", "choices": ["drill", "digest"], "default": "drill"},
        "zpool": {"type": "str"},
        "backup": {"type": "str", "required": True},
        "type": {"type": "str", "choices": ["dataset", "file", "1", "2"], "default": "dataset"},
        "vm_uuid": {"type": "str"},
        "disk": {"type": "int", "default": 0},
        "file_path": {"type": "path"},
        "source": {"type": "str"},
        "source_digest": {"type": "str"},
        "source_guid": {"type": "str"},
        "source_snapshot": {"type": "str"},
        "source_node": {"type": "str"},
        "expected_digest": {"type": "str"},
        "bwlimit": {"type": "int", "default": 0},
        "progress_file": {"type": "path"},
    }
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                           required_if=[("mode", "drill", ("zpool", "vm_uuid")), ("mode", "digest", ("source",))])
    p = module.params
    for key in ("source_digest", "expected_digest"):
        p[key] = p[key].strip().lower() if isinstance(p[key], str) and p[key].strip() else None
    check_names(module, datasets={"source": p["source"]}, snapshots={"backup": p["backup"]},
                pools={"zpool": p["zpool"]}, uuids={"vm_uuid": p["vm_uuid"]})
    for key in ("source_digest", "expected_digest"):
        check_digest(module, key, p[key])
    if p["source_guid"] is not None and not p["source_guid"].isdigit():
        fail(module, "source_guid: '%s' is not a guid (digits)" % p["source_guid"], option="source_guid")
    for key in ("source_node", "source_snapshot"):  # only named in messages
        check_label(module, key, p[key])
    check_path(module, "progress_file", p["progress_file"])
    check_path(module, "file_path", p["file_path"])
    if p["disk"] < 0:
        fail(module, "disk: must be 0 or more (the API's disk_id minus one)", option="disk")
    if p["bwlimit"] < 0:
        fail(module, "bwlimit: must be 0 (unlimited) or a number of bytes per second", option="bwlimit")
    if p["mode"] == "digest" and "/" not in p["source"]:
        fail(module, "source: %s is a pool, not a VM disk" % p["source"], option="source")

    stop_on_signals()
    run = Drill(module)
    try:
        try:
            if p["mode"] == "digest":
                run.source_digest()
            else:
                run.run()
        finally:
            cleanup = run.drop_scratch()
    except ERRORS as err:
        cleanup = run.drop_scratch()  # again, should a signal have cut the first one short
        result = dict(run.result)
        result.update(changed=False, ok=False, reason=str(err))
        if p["mode"] == "drill" and not module.check_mode:
            result["outcome"] = "failed"
        result.update(getattr(err, "extra", {}))
        fail(module, str(err), err, cleanup, **result)
    module.exit_json(**run.result)


if __name__ == "__main__":
    main()
