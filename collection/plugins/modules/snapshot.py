#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: snapshot
short_description: Create or remove a snapshot of a VM disk, optionally with the guest frozen
description:
  - Creates (C(state=present)) or destroys (C(state=absent)) the snapshot C(dataset@name) of a VM disk on
    the node the module runs on (a compute node), with vmbackup's user properties that say which backup
    and which definition it belongs to.
  - With I(fsfreeze), the guest's filesystems are frozen through its QEMU guest agent socket right before
    the snapshot and thawed right after it, whatever happened to the snapshot. A freeze that fails is
    reported in C(fsfreeze) and as a warning; the snapshot is still made.
  - Names are checked before any command runs.
version_added: "0.1.0"
author: vmbackup developers (@vmbackup)
requirements:
  - Python 3.8 or newer on the node
  - ZFS on the node (OpenZFS 2.x, illumos or zfs-fuse)
extends_documentation_fragment:
  - vmbackup.zfs.attributes
  - vmbackup.zfs.attributes.FAILURE
seealso:
  - module: vmbackup.zfs.send
    description: Sends the snapshot to a backup node.
  - module: vmbackup.zfs.vm_info
    description: Finds the VM disks and their guest agent sockets.
options:
  dataset:
    description: The VM disk, for example C(zones/<uuid>-disk0) (a zvol) or C(zones/<uuid>) (an OS zone).
    type: str
    required: true
  name:
    description: The snapshot name (the part after C(@)), usually the backup name C(<bkpdef>-YYYYMMDD_HHMMSS).
    type: str
    required: true
  state:
    description: Whether the snapshot should exist.
    type: str
    choices: [present, absent]
    default: present
  properties:
    description:
      - User properties to set on the snapshot, for example C(vmbackup:backup) and C(vmbackup:define).
        Each name must contain a colon. Existing snapshots get missing or different values set.
    type: dict
    default: {}
  fsfreeze:
    description: Freeze the guest's filesystems through its QEMU guest agent around the snapshot.
    type: bool
    default: false
  qga_socket:
    description: Path of the guest agent's unix socket; required with I(fsfreeze=true).
    type: path
  freeze_timeout:
    description: Seconds to wait for the guest agent on each call.
    type: float
    default: 10
notes:
  - Check mode reports what would change without touching the node.
  - The diff is the snapshot and its vmbackup properties before and after.
"""

EXAMPLES = r"""
- name: Snapshot disk 0 of a VM for the backup daily-20261128_040000
  vmbackup.zfs.snapshot:
    dataset: zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0
    name: daily-20261128_040000
    properties:
      "vmbackup:backup": daily-20261128_040000
      "vmbackup:define": daily

- name: Snapshot with the guest's filesystems frozen
  vmbackup.zfs.snapshot:
    dataset: zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0
    name: daily-20261128_040000
    fsfreeze: true
    qga_socket: /zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a/root/tmp/vm.qga

- name: Remove it again
  vmbackup.zfs.snapshot:
    dataset: zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0
    name: daily-20261128_040000
    state: absent
"""

RETURN = r"""
snapshot:
  description: The full snapshot name.
  returned: always
  type: str
  sample: zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0@daily-20261128_040000
guid:
  description: The snapshot's guid (the same on the backup node once sent); empty when it does not exist.
  returned: always
  type: str
  sample: "11282167598858090038"
created:
  description: Whether this run created the snapshot.
  returned: always
  type: bool
  sample: true
destroyed:
  description: Whether this run destroyed the snapshot.
  returned: always
  type: bool
  sample: false
properties:
  description: The user properties set by this run.
  returned: always
  type: dict
  sample: {"vmbackup:backup": "daily-20261128_040000", "vmbackup:define": "daily"}
fsfreeze:
  description: What happened to the freeze; C(frozen) is true when the guest agent froze filesystems.
  returned: when fsfreeze is true
  type: dict
  sample: {"frozen": true, "filesystems": 2, "thawed": true, "msg": ""}
diff:
  description: The snapshot before and after (null where it does not exist), with the properties asked for.
  returned: always
  type: dict
  sample:
    before: null
    after:
      snapshot: zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0@daily-20261128_040000
      properties: {"vmbackup:backup": "daily-20261128_040000"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.zfs.plugins.module_utils.checks import check_names
from ansible_collections.vmbackup.zfs.plugins.module_utils.dataset import Dataset
from ansible_collections.vmbackup.zfs.plugins.module_utils.job import fail
from ansible_collections.vmbackup.zfs.plugins.module_utils.qga import GuestAgent, GuestAgentError
from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import Node, ZfsError


def freeze_and_snapshot(node: Node, full: str, properties: dict, socket_path: str, timeout: float) -> dict:
    """Freeze, snapshot, thaw: the thaw always runs once a freeze was asked for."""
    report = {"frozen": False, "filesystems": 0, "thawed": False, "msg": ""}
    agent = GuestAgent(socket_path, timeout)
    try:
        agent.__enter__()
    except GuestAgentError as err:
        report["msg"] = "fsfreeze failed, snapshot taken without it: %s" % err
        node.snapshot(full, properties)
        return report
    try:
        try:
            report["filesystems"] = agent.freeze()
            report["frozen"] = True
        except GuestAgentError as err:
            report["msg"] = "fsfreeze failed, snapshot taken without it: %s" % err
        node.snapshot(full, properties)
    finally:
        try:
            agent.thaw()
            report["thawed"] = True
        except GuestAgentError as err:
            if report["frozen"]:
                report["msg"] = "guest thaw failed, check the guest: %s" % err
        agent.__exit__()
    return report


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "dataset": {"type": "str", "required": True},
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "properties": {"type": "dict", "default": {}},
            "fsfreeze": {"type": "bool", "default": False},
            "qga_socket": {"type": "path"},
            "freeze_timeout": {"type": "float", "default": 10.0},
        },
        required_if=[("fsfreeze", True, ["qga_socket"])],
        supports_check_mode=True,
    )
    p = module.params
    check_names(module, datasets={"dataset": p["dataset"]}, snapshots={"name": p["name"]})
    properties = {str(k): str(v) for k, v in p["properties"].items()}
    for key in properties:
        if ":" not in key or key.startswith("-") or any(c.isspace() or c == "=" for c in key):
            fail(module, "properties: '%s' is not a user property name (it needs a colon, e.g. "
                         "vmbackup:backup)" % key, option="properties")

    node = Node()
    full = "%s@%s" % (p["dataset"], p["name"])
    snapshot = Dataset(node, full)
    result = {"changed": False, "snapshot": full, "guid": "", "created": False, "destroyed": False,
              "properties": {}, "diff": {"before": None, "after": None}}
    try:
        if not Dataset(node, p["dataset"]).exists():
            fail(module, "dataset: %s does not exist on this node" % p["dataset"], **result)
        exists = snapshot.exists()
        current = snapshot.properties(["guid"] + list(properties)) if exists else {}
        before = {"snapshot": full, "properties": {k: current.get(k, "-") for k in properties}} if exists else None
        result["diff"] = {"before": before, "after": before}
        if p["state"] == "absent":
            if exists:
                result.update(changed=True, destroyed=True, diff={"before": before, "after": None})
                if not module.check_mode:
                    snapshot.destroy()
            module.exit_json(**result)

        result["diff"]["after"] = {"snapshot": full, "properties": dict(properties)}
        if exists:
            result["guid"] = current.get("guid", "")
            different = {k: v for k, v in properties.items() if current.get(k) != v}
            if different:
                result.update(changed=True, properties=different)
                if not module.check_mode:
                    node.set(full, different)
            module.exit_json(**result)

        result.update(changed=True, created=True, properties=properties)
        if module.check_mode:
            module.exit_json(**result)
        if p["fsfreeze"]:
            result["fsfreeze"] = freeze_and_snapshot(node, full, properties, p["qga_socket"], p["freeze_timeout"])
            if result["fsfreeze"]["msg"]:
                module.warn(result["fsfreeze"]["msg"])
        else:
            node.snapshot(full, properties)
        result["guid"] = snapshot.get("guid")
    except ZfsError as err:
        fail(module, str(err), err, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
