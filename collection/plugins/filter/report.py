# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters that turn looped module results into the one result a playbook reports."""

from __future__ import annotations

DOCUMENTATION = r"""
name: batch_report
short_description: One result per backup from the looped results of a batch backup
description:
  - Takes the registered results of a C(vmbackup.zfs.send) task looped over the results of a
    C(vmbackup.zfs.snapshot) task looped over the backups, and returns a dict keyed by
    C(<vm_uuid>:<disk_id>:<bkpname>) (backups of several disks due at once share a name) whose values
    hold C(ok), C(size), C(time), C(file_path), C(checksum), C(incremental) and C(msg).
positional: _input
options:
  _input:
    description: The C(results) list of the registered send task.
    type: list
    elements: dict
    required: true
"""

EXAMPLES = r"""
- name: Report the batch
  ansible.builtin.set_stats:
    data:
      vmbackup_result:
        backups: "{{ vmbackup_sends.results | vmbackup.zfs.batch_report }}"
"""

RETURN = r"""
_value:
  description: The outcome of each backup, by C(<vm_uuid>:<disk_id>:<bkpname>).
  type: dict
"""

FIELDS = ("size", "time", "file_path", "checksum", "incremental", "base", "target")


def batch_key(vm_uuid: str, disk_id, bkpname: str) -> str:
    """How a batch names one backup: names repeat across disks due at the same second."""
    return "%s:%s:%s" % (vm_uuid, int(disk_id), bkpname)


def batch_report(results: list) -> dict:
    report = {}
    for result in results or []:
        snapshot = result.get("item") or {}
        backup = snapshot.get("item") or {}
        if not backup.get("bkpname"):
            continue
        name = batch_key(backup["vm_uuid"], backup["disk_id"], backup["bkpname"])
        skipped = bool(result.get("skipped"))
        ok = not skipped and not result.get("failed")
        entry = {"ok": ok, "msg": ""}
        if ok:
            entry.update({field: result.get(field) for field in FIELDS})
        else:
            source = snapshot if skipped else result
            entry["msg"] = str(source.get("msg") or ("snapshot failed" if skipped else "send failed"))
        report[name] = entry
    return report


class FilterModule:
    def filters(self) -> dict:
        return {"batch_report": batch_report}
