#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: prune
short_description: Delete backups of a VM disk on this backup node, by name or by retention
description:
  - Runs on the backup node and deletes backups of one VM disk (C(<vm_uuid>-disk<disk>)), given by name in
    I(backups), or by retention (the oldest of one I(definition)'s backups beyond the newest I(keep)), or both.
  - A dataset backup is a snapshot of C(<zpool>/backups/ds/<vm_uuid>-disk<disk>) (or of a dataset that
    M(vmbackup.zfs.send) kept aside after a broken chain); its manifest goes with it. When the last snapshot of
    such a dataset goes, the dataset goes too.
  - A file backup is its file and its manifest.
  - Never deleted, and reported in C(kept) with the reason, are the newest snapshot of the backup dataset that
    the source disk I(source) also has (same guid), which the next incremental backup starts from; when
    I(source) is not given, the newest snapshot of the backup dataset (it may be that base); and the backups
    named in I(protect) (for example those being restored). When I(source) no longer exists, no snapshot is
    protected for it. When the compute node cannot be asked, nothing is deleted.
  - Idempotent. Backups already gone are listed in C(absent).
version_added: "0.1.0"
author: vmbackup developers (@vmbackup)
requirements:
  - Python 3.8 or newer on the backup node (the compute node is only asked by ssh to run C(zfs))
  - ZFS on both nodes (OpenZFS 2.x, illumos or zfs-fuse); C(ssh) to reach the compute node
extends_documentation_fragment:
  - vmbackup.zfs.attributes
  - vmbackup.zfs.attributes.FAILURE
  - vmbackup.zfs.node.SOURCE
seealso:
  - module: vmbackup.zfs.backup_info
    description: Lists the backups this module deletes.
  - module: vmbackup.zfs.send
    description: Makes them, and tidies the source's snapshots with I(prune_source).
options:
  zpool:
    description: The pool on this backup node that holds the backups.
    type: str
    required: true
  type:
    description: C(dataset) (API type 1) or C(file) (API type 2) backups.
    type: str
    choices: [dataset, file, "1", "2"]
    default: dataset
  vm_uuid:
    description: The uuid of the VM whose backups these are; defaults to the uuid in I(source).
    type: str
  disk:
    description: The 0-based disk number (the API's I(disk_id) minus one); defaults to the one in I(source), or 0.
    type: int
  backups:
    description: Names of the backups to delete.
    type: list
    elements: str
    default: []
  definition:
    description: The backup definition whose backups I(keep) counts; required with I(keep).
    type: str
  keep:
    description:
      - The retention, keep the newest I(keep) backups of I(definition) of this disk and delete the older
        ones. C(0) keeps all.
    type: int
  keep_base:
    description:
      - Keep the base of the next incremental backup (see above). Retention always keeps it; an explicit
        delete of backups by name (the API's DELETE) sets this to false, and the next backup of the disk
        is then a full one (the old backup dataset is kept aside).
    type: bool
    default: true
  protect:
    description: Names of backups that must not be deleted, whatever else says so.
    type: list
    elements: str
    default: []
  source:
    description:
      - The VM disk on the compute node (C(<pool>/<uuid>-disk<N>)), reached with the I(source_*) options; its
        snapshots say which backup is the base of the next incremental backup.
    type: str
notes:
  - Check mode returns the same C(destroyed) and C(kept) lists and destroys nothing.
  - The diff is the disk's backups (of the I(type) asked for) before and after.
"""

EXAMPLES = r"""
- name: Retention after a daily backup, keeping the incremental base the compute node still has
  vmbackup.zfs.prune:
    zpool: zones
    source: zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0
    source_host: node01.example.com
    definition: daily
    keep: 30

- name: Delete two file backups by name
  vmbackup.zfs.prune:
    zpool: backup
    type: file
    vm_uuid: 9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a
    disk: 0
    backups: [weekly-20261107_040000, weekly-20261114_040000]
"""

RETURN = r"""
destroyed:
  description: The names of the backups deleted (or that would be, in check mode), oldest first.
  returned: always
  type: list
  elements: str
  sample: [daily-20261001_040000, daily-20261002_040000]
kept:
  description: The backups asked for (by name or by the definition) that stay, each with the reason.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "daily-20261128_040000", "reason": "within the newest 30 of daily"}]
absent:
  description: Names in I(backups) that are not on this node (already deleted).
  returned: always
  type: list
  elements: str
  sample: [daily-20261001_040000]
destroyed_datasets:
  description: Backup datasets destroyed because their last snapshot went.
  returned: always
  type: list
  elements: str
  sample: [backup/backups/ds/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0-aside-20261101T040000]
removed:
  description: What was removed, in order (snapshots, manifests, files, datasets).
  returned: always
  type: list
  elements: str
  sample:
    - backup/backups/ds/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0@daily-20261001_040000
    - /backup/backups/manifests/ds/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0/daily-20261001_040000.json
diff:
  description: The names of the disk's backups before and after.
  returned: always
  type: dict
  sample: {"before": {"backups": [daily-20261001_040000, daily-20261002_040000]},
           "after": {"backups": [daily-20261002_040000]}}
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout, listing, retention
from ansible_collections.vmbackup.zfs.plugins.module_utils.checks import check_host, check_names
from ansible_collections.vmbackup.zfs.plugins.module_utils.dataset import Dataset
from ansible_collections.vmbackup.zfs.plugins.module_utils.job import fail
from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import (
    Node,
    ZfsError,
    node_argument_spec,
    ssh_target_from_params,
)


class Prune:
    """One run: what exists, what is protected, what goes; then the deletion, oldest first."""

    def __init__(self, module: AnsibleModule, vm_uuid: str, disk: int):
        self.module = module
        self.p = module.params
        self.local = Node()
        self.vm_uuid, self.disk = vm_uuid, disk
        self.kind = {"1": "dataset", "2": "file"}.get(self.p["type"], self.p["type"])
        self.result = {"changed": False, "destroyed": [], "kept": [], "absent": [], "destroyed_datasets": [],
                       "removed": [], "diff": {"before": {"backups": []}, "after": {"backups": []}}}

    def backups(self) -> list[dict]:
        """This disk's backups of this type, oldest first (orphan manifests last)."""
        if self.kind == "dataset":
            found = listing.dataset_backups(self.local, self.p["zpool"])
        else:
            found = listing.file_backups(self.local, self.p["zpool"])
        return [b for b in found if b["vm_uuid"] == self.vm_uuid and b["disk"] == self.disk]

    def protected(self, backups: list[dict]) -> dict[str, str]:
        """{backup name: why it must stay}."""
        reasons = {name: retention.KEEP_PROTECTED for name in self.p["protect"]}
        if self.kind != "dataset" or not self.p["keep_base"]:
            return reasons  # a file is a full stream: the base of nothing
        main = layout.dataset_backup_target(self.p["zpool"], self.vm_uuid, self.disk)
        snaps = [b for b in backups if b["dataset"] == main]
        if not snaps:
            return reasons
        if not self.p["source"]:
            reasons.setdefault(snaps[-1]["name"], retention.KEEP_NEWEST)
            return reasons
        source = Dataset(Node(ssh_target_from_params(self.p, "source")), self.p["source"])
        if not source.exists():
            return reasons  # the VM disk is gone: no next incremental to protect
        guids = {s.guid for s in source.snapshots()}
        common_snaps = [b for b in snaps if b["guid"] in guids]
        if common_snaps:
            reasons.setdefault(common_snaps[-1]["name"], retention.KEEP_BASE)
        return reasons

    def run(self) -> None:
        backups = self.backups()
        plan = retention.plan(backups, self.p["backups"], self.p["keep"] or 0, self.p["definition"],
                              self.protected(backups))
        emptied = retention.emptied_datasets(backups, plan.doomed) if self.kind == "dataset" else []
        before = list(dict.fromkeys(b["name"] for b in backups))
        self.result.update(changed=bool(plan.doomed), kept=plan.kept, absent=plan.absent, diff={
            "before": {"backups": before},
            "after": {"backups": [name for name in before if name not in plan.names]}})
        if self.module.check_mode:
            self.result.update(destroyed=plan.names, destroyed_datasets=emptied)
            return
        for b in plan.doomed:
            self.delete(b)
            if b["name"] not in self.result["destroyed"]:
                self.result["destroyed"].append(b["name"])
        for dataset in emptied:
            Dataset(self.local, dataset).destroy()
            self.result["removed"].append(dataset)
            self.result["destroyed_datasets"].append(dataset)

    def delete(self, b: dict) -> None:
        """Delete one backup: the data first, then its manifest (a manifest left alone says the data is lost)."""
        if b["type"] == "dataset" and b["dataset"]:
            Dataset(self.local, b["path"]).destroy()
            self.result["removed"].append(b["path"])
        elif b["type"] == "file" and os.path.exists(b["path"]):
            os.unlink(b["path"])
            self.result["removed"].append(b["path"])
        if b["manifest"] and os.path.exists(b["manifest"]):
            os.unlink(b["manifest"])
            self.result["removed"].append(b["manifest"])
        if b["type"] == "file":
            folder = os.path.dirname(b["path"])
            for empty in (folder, os.path.dirname(folder)):  # disk<N>/, then <uuid>/
                try:
                    os.rmdir(empty)
                except OSError:
                    break


def main() -> None:
    spec = {
        "zpool": {"type": "str", "required": True},
        "type": {"type": "str", "choices": ["dataset", "file", "1", "2"], "default": "dataset"},
        "vm_uuid": {"type": "str"},
        "disk": {"type": "int"},
        "backups": {"type": "list", "elements": "str", "default": []},
        "definition": {"type": "str"},
        "keep": {"type": "int"},
        "protect": {"type": "list", "elements": "str", "default": []},
        "keep_base": {"type": "bool", "default": True},
        "source": {"type": "str"},
    }
    spec.update(node_argument_spec("source"))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                           required_one_of=[("vm_uuid", "source"), ("backups", "keep")],
                           required_by={"keep": "definition"})
    p = module.params
    check_names(module, datasets={"source": p["source"]}, pools={"zpool": p["zpool"]},
                snapshots=dict({"definition": p["definition"]},
                               **{"backups[%d]" % i: name for i, name in enumerate(p["backups"])}))
    check_host(module, "source_host", p["source_host"])
    vm_uuid, disk = p["vm_uuid"], p["disk"]
    if p["source"]:
        try:
            source_uuid, source_disk = layout.disk_of(p["source"])
        except ValueError as err:
            fail(module, "source: %s" % err)
        vm_uuid = vm_uuid or source_uuid
        disk = source_disk if disk is None else disk
    check_names(module, uuids={"vm_uuid": vm_uuid})
    if (disk or 0) < 0 or (p["keep"] or 0) < 0:
        fail(module, "%s: must be 0 or more" % ("disk" if (disk or 0) < 0 else "keep"))

    run = Prune(module, vm_uuid.lower(), disk or 0)
    try:
        run.run()
    except (ZfsError, OSError) as err:
        run.result["changed"] = bool(run.result["removed"])
        fail(module, str(err), err, **run.result)
    module.exit_json(**run.result)


if __name__ == "__main__":
    main()
