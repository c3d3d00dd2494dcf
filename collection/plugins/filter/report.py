# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters of playbooks/backup.yml, which backs up 1..N disks the same way: each backup's key, its
variables checked, its VM found in the compute nodes' answers, and the one result the run reports."""

from __future__ import annotations

import time
from collections.abc import Mapping

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout

DOCUMENTATION = r"""
name: batch_result
short_description: The result of playbooks/backup.yml, one record per backup
description:
  - C(batch_items) checks the backups' variables (the argument spec, then the name rules), C(batch_locate)
    finds each backup's VM and disk in the answers of C(vmbackup.zfs.vm_info), C(batch_nodes) groups the
    backups by compute node, C(batch_result) makes the run's C(vmbackup_result) (C(ok), C(check), and
    C(backups) keyed by C(<vm_uuid>:<disk_id>:<bkpname>); a batch of one also has its record's fields at
    the top level), C(batch_said) what the run says it did, one line per step.
  - C(variable_problems) checks a playbook's variables against the rules an argument spec cannot say (nodes of
    the inventory, names by the collection's patterns, numbers), one message per problem naming the variable;
    tasks/validate.yml and C(batch_items) both use it.
  - C(pool_or_default) gives a pool as given, or C(zones) (the collection's default pool) when none is.
  - C(utc_stamp) writes a time (a datetime, naive taken as UTC, or Unix seconds) as every time of vmbackup is
    written, ISO 8601 UTC to the millisecond with a Z, e.g. C(now(utc=true) | vmbackup.zfs.utc_stamp).
positional: _input
options:
  _input:
    description: The backups (C(batch_items), C(batch_locate), C(batch_nodes), C(batch_result)).
    type: list
    elements: dict
    required: true
"""

EXAMPLES = r"""
- name: Report the backups
  ansible.builtin.set_stats:
    data:
      vmbackup_result: "{{ vmbackup_items | vmbackup.zfs.batch_result(vmbackup_outcomes, ansible_check_mode) }}"
"""

RETURN = r"""
_value:
  description: The run's result, C({ok, check, backups}) (with a single backup's fields at the top level).
  type: dict
"""

# The variables of one backup, their defaults, and those that the top-level variables give every item
# of a batch that does not say (the definition's words; a VM, disk, name or file is each item's own).
DEFAULTS = {"disk_id": 1, "type": 1, "compression": "0", "bwlimit": 0, "retention": 0, "fsfreeze": False,
            "keep_snapshot": True, "protect": []}
SHARED = ("node", "zpool", "compute_node", "bkpdef", "type", "compression", "bwlimit", "retention", "fsfreeze",
          "keep_snapshot", "protect")
BATCH_ONLY = ("backups", "vmbackup_parallel", "vmbackup_progress_file")
RECORD_FIELDS = ("name", "define", "hostname", "vm_uuid", "disk_id", "compute_node", "source", "node", "zpool",
                 "type", "created", "size", "time", "target", "file_path", "checksum", "manifest", "incremental",
                 "base", "raw", "kept_aside", "pruned_source", "cmd", "fsfreeze", "retention", "pruned", "kept")


def pool_or_default(pool) -> str:
    """A pool as given, or layout.DEFAULT_POOL where none is (None or '')."""
    return pool or layout.DEFAULT_POOL


def batch_key(vm_uuid: str, disk_id, bkpname: str) -> str:
    """How a batch names one backup: names repeat across disks due at the same second."""
    try:
        disk_id = int(disk_id)
    except (TypeError, ValueError):
        pass
    return "%s:%s:%s" % (vm_uuid, disk_id, bkpname)


def plain(value):
    """The value with its dicts and lists rebuilt as plain ones, read once. Ansible 2.19 hands a filter lazy
    containers that template a value each time it is read; a batch of 1,000 backups read them so often that
    checking it took minutes. Strings are kept as they are (with their trust tags)."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def item_spec(spec: dict) -> dict:
    """The argument spec of one item: the playbook's, with progress_file for vmbackup_progress_file."""
    options = {name: dict(option) for name, option in spec.items() if name not in BATCH_ONLY}
    options["progress_file"] = dict(spec["vmbackup_progress_file"], aliases=["vmbackup_progress_file"])
    return options


def given(values: dict) -> dict:
    """What was said: an empty or null answer (a blank AWX survey field) is not an answer."""
    return {name: value for name, value in (values or {}).items() if value is not None and value != ""}


def _number(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def variable_problems(values: dict, names, rules: dict, word=str) -> list[str]:
    """The rules an argument spec cannot say, for the variables `names` of a playbook (its spec) that `values`
    gives: one message per problem, each starting with the variable's name (`word` labels it, e.g. a batch
    item's `backups[2].zpool`). The one home of these rules: tasks/validate.yml asks it for every playbook and
    batch_items for each backup; the name patterns are the collection's (module_utils/layout.py).
    rules: backup_nodes, compute_nodes (the inventory's groups)."""
    names, said = set(names), given(values)
    problems = []
    if "node" in names and said.get("node") not in rules["backup_nodes"]:
        problems.append("%s: '%s' is not a host of the inventory group backup (it has: %s)"
                        % (word("node"), said.get("node"), ", ".join(rules["backup_nodes"]) or "none"))
    for name in ("compute_node", "target_compute_node"):
        if name in names and said.get(name) and said.get(name) not in rules["compute_nodes"]:
            problems.append("%s: '%s' is not a host of the inventory group compute (it has: %s)"
                            % (word(name), said.get(name), ", ".join(rules["compute_nodes"]) or "none"))
    if "vm_uuid" in names and not said.get("hostname") and not said.get("vm_uuid"):
        problems.append("%s: give the VM's hostname or uuid (or vm_uuid)" % word("hostname"))
    if "target_vm_uuid" in names and not said.get("target_hostname") and not said.get("target_vm_uuid"):
        problems.append("%s: give the VM to restore into (or target_vm_uuid)" % word("target_hostname"))
    for name in ("vm_uuid", "target_vm_uuid"):
        if name in names and said.get(name) and not layout.UUID_RE.match(str(said.get(name))):
            problems.append("%s: '%s' is not a uuid" % (word(name), said.get(name)))
    for name in ("disk_id", "target_disk_id"):
        number = _number(values.get(name, 1))
        if name in names and (number is None or number < 1):
            problems.append("%s: %s is not a disk number (they start at 1)" % (word(name), values.get(name)))
    for name in ("bwlimit", "retention"):
        number = _number(values.get(name, 0))
        if name in names and number is not None and number < 0:
            problems.append("%s: %s cannot be negative" % (word(name), values.get(name)))
    if "retention" in names and (_number(values.get("retention", 0)) or 0) > 65536:
        problems.append("%s: %s is more than 65536" % (word("retention"), values.get("retention")))
    pool_problem = layout.invalid_pool(values.get("zpool")) if "zpool" in names else None
    if pool_problem:
        problems.append("%s: %s, at most %d characters" % (word("zpool"), pool_problem, layout.MAX_NAME))
    digest = said.get("expected_digest")
    if "expected_digest" in names and digest and (not isinstance(digest, str) or not layout.DIGEST_RE.match(digest)):
        problems.append("%s: '%s' is not a sha256 digest (64 lowercase hex digits)" % (word("expected_digest"), digest))
    if "bkpdef" in names and not layout.DEFINITION_RE.match(str(values.get("bkpdef"))):
        problems.append("%s: '%s' is not a definition name (1 to 8 letters, digits or '._-', starting with a "
                        "letter or digit)" % (word("bkpdef"), values.get("bkpdef")))
    if "bkpname" in names and values.get("bkpname") is not None:
        listed = values.get("bkpnames")
        listed = [values["bkpname"]] if listed is None else listed
        bad = [str(n) for n in listed if not layout.BACKUP_NAME_RE.match(str(n))]
        if not listed or bad:
            problems.append("%s: %s (a backup name is <bkpdef>-YYYYMMDD_HHMMSS, for example daily-20261128_040000)"
                            % (word("bkpname"), ("'%s' is not a backup name" % "', '".join(bad)) if bad
                               else "no backup name given"))
    return problems


def rule_problems(item: dict, rules: dict, word) -> list[str]:
    """The rules an argument spec cannot say, for one backup of a batch."""
    names = ("node", "compute_node", "vm_uuid", "disk_id", "bwlimit", "retention", "zpool", "bkpdef", "bkpname")
    values = dict(item, bkpname=item.get("bkpname") or None)
    return variable_problems(values, names, rules, word)


def batch_items(backups: list, spec: dict, rules: dict, shared: dict | None = None, listed: bool = True) -> list:
    """Each backup with its defaults, checked: `problems` ('' when it may run) names the item and the variable.

    rules: {backup_nodes, compute_nodes, zpools (each backup node's vmbackup_zpool), time (Unix seconds the
    backups' names and `created` take; now if not given)}; shared: the top-level variables; listed: the
    backups came as the list `backups` (messages then say backups[<n>].<variable>).
    """
    spec, rules, shared, backups = plain(spec), plain(rules), plain(shared), plain(backups)
    when = time.time() if rules.get("time") is None else float(rules["time"])
    stamp, created = time.strftime(layout.BACKUP_TIME_FORMAT, time.gmtime(when)), layout.utc_stamp(when)
    options = item_spec(spec)
    common = {name: value for name, value in given(shared).items() if name in SHARED}
    items = []
    for index, raw in enumerate(backups or []):
        label = "backups[%d]" % index if listed else ""

        def word(name: str, label: str = label) -> str:
            return "%s.%s" % (label, name) if label else name

        item = {"index": index, "label": label, "created": created, "problems": "",
                "failed_task": "Check the variables"}
        if not isinstance(raw, dict):
            items.append(dict(item, key=label, problems="%s: not a dict of a backup's variables" % label))
            continue
        values = dict(DEFAULTS, **common)
        values.update(given(raw))
        if "vmbackup_progress_file" in values:
            values.setdefault("progress_file", values.pop("vmbackup_progress_file"))
        values.pop("vmbackup_progress_file", None)
        unknown = sorted(name for name in values if name not in options)
        checked = ArgumentSpecValidator(options).validate({k: v for k, v in values.items() if k in options})
        item.update(given(checked.validated_parameters if not checked.error_messages else values))
        problems = ["%s: not a variable of a backup (they are: %s)" % (word(name), ", ".join(sorted(options)))
                    for name in unknown]
        problems += ["%s%s" % (label + ": " if label else "", m) for m in checked.error_messages]
        if not problems:
            item["zpool"] = pool_or_default(item.get("zpool") or rules["zpools"].get(item["node"]))
            problems = rule_problems(item, rules, word)
            item["bkpname"] = item.get("bkpname") or "%s-%s" % (item["bkpdef"], stamp)
        item["key"] = batch_key(item.get("vm_uuid") or item.get("hostname") or label, item.get("disk_id"),
                                item.get("bkpname") or item.get("bkpdef"))
        item["problems"] = "; ".join(problems)
        items.append(item)
    return apart(items)


def apart(items: list) -> list:
    """Refuse a backup whose key an earlier one has (the same disk and name twice); it is keyed by its label."""
    seen: dict = {}
    for item in items:
        if item["key"] in seen:
            item.update(problems="%s: the same disk and backup name as %s" % (item["label"], seen[item["key"]]),
                        key=item["label"] or item["key"], failed_task=item["failed_task"] or "Check the variables")
        seen.setdefault(item["key"], item["label"])
    return items


def matches(vm: dict, want: str) -> bool:
    """A uuid names the VM of that uuid, a hostname the VMs of that hostname: a guest that calls itself by
    another VM's uuid never stands in its way."""
    if layout.UUID_RE.match(want):
        return vm.get("uuid") == want.lower()
    return str(vm.get("hostname", "")).lower() == want.lower()


def batch_locate(items: list, answers: list, compute_hosts: list) -> list:
    """Each checked backup with its VM (`vm`: uuid, hostname, brand, state, qga_socket, node, disk) found in the
    looped results of vmbackup.zfs.vm_info (one per compute node), or why not (`problems`)."""
    items, answers, compute_hosts = plain(items), plain(answers), plain(compute_hosts)
    by_node = {answer.get("item"): answer for answer in answers or []}
    located = []
    for item in items:
        item = dict(item)
        located.append(item)
        if item["problems"]:
            continue

        def word(name: str, label: str = item["label"]) -> str:
            return "%s.%s" % (label, name) if label else name

        vm_word = word("vm_uuid" if item.get("vm_uuid") else "hostname")
        want = item.get("vm_uuid") or item["hostname"]
        nodes = [item["compute_node"]] if item.get("compute_node") else list(compute_hosts)
        asked = [by_node[n] for n in nodes if "vms" in by_node.get(n, {})]
        not_asked = ["%s: %s" % (n, by_node.get(n, {}).get("msg") or "unreachable") for n in nodes
                     if "vms" not in by_node.get(n, {})]
        candidates = [(a["item"], [vm for vm in a["vms"] if matches(vm, want)]) for a in asked]
        candidates = [(node, vms) for node, vms in candidates if vms]
        item["failed_task"] = "Find the VM and its disk"
        if not candidates:
            where = ("%s %s" % (word("compute_node"), item["compute_node"]) if item.get("compute_node") else
                     "the compute nodes (%s)" % (", ".join(compute_hosts) or "the group compute is empty"))
            item["problems"] = "%s: VM '%s' not found on %s%s" % (
                vm_word, want, where, ("; not asked: " + "; ".join(not_asked)) if not_asked else "")
            continue
        if len(candidates) > 1 or len(candidates[0][1]) > 1:
            item["problems"] = "%s: '%s' names several VMs (on %s); give the uuid or %s" % (
                vm_word, want, ", ".join(node for node, _vms in candidates), word("compute_node"))
            continue
        node, (vm,) = candidates[0]
        disk = next((d for d in vm.get("disks") or [] if d.get("disk_id") == item["disk_id"]), None)
        if disk is None:
            item["problems"] = "%s: VM %s has no disk %s (its disks: %s)" % (
                word("disk_id"), vm["hostname"], item["disk_id"],
                ", ".join(str(d["disk_id"]) for d in vm.get("disks") or []) or "none")
            continue
        item["vm"] = dict(vm, node=node, disk=disk)
        item["key"] = batch_key(vm["uuid"], item["disk_id"], item["bkpname"])
        item["failed_task"] = ""
    return apart(located)


def batch_nodes(items: list) -> list:
    """The backups that may run, by compute node ({node, items}), the node with the most disks first."""
    items = plain(items)
    nodes: dict[str, list] = {}
    for item in items:
        if not item["problems"]:
            nodes.setdefault(item["vm"]["node"], []).append(item)
    return sorted(({"node": node, "items": group} for node, group in nodes.items()),
                  key=lambda group: -len(group["items"]))


def record(item: dict, outcome: dict | None) -> dict:
    """One backup's record: what it is, and what its snapshot, send and prune did (or why it failed)."""
    vm = item.get("vm") or {}
    outcome = outcome or {"ok": False, "failed_task": item["failed_task"] or "Back up the disks of each compute node",
                          "msg": item["problems"] or "not run: its compute node %s did not run it (unreachable?)"
                          % vm.get("node")}
    snapshot, sent, pruned = outcome.get("snapshot") or {}, outcome.get("send") or {}, outcome.get("pruned") or {}
    fsfreeze = snapshot.get("fsfreeze")
    if fsfreeze is None and item.get("fsfreeze") and not item.get("problems"):
        fsfreeze = {"frozen": False, "msg": "fsfreeze: no guest agent socket known for %s; the snapshot was taken "
                                            "without it" % vm.get("hostname")}
    dataset = (vm.get("disk") or {}).get("dataset")
    return {
        "ok": bool(outcome.get("ok")), "msg": outcome.get("msg") or "", "failed_task": outcome.get("failed_task"),
        "cleanup": outcome.get("cleanup") or [], "name": item.get("bkpname"), "define": item.get("bkpdef"),
        "hostname": vm.get("hostname") or item.get("hostname"), "vm_uuid": vm.get("uuid") or item.get("vm_uuid"),
        "disk_id": item.get("disk_id"), "compute_node": vm.get("node") or item.get("compute_node"),
        "source": sent.get("source") or ("%s@%s" % (dataset, item.get("bkpname")) if dataset else None),
        "node": item.get("node"), "zpool": item.get("zpool"), "type": item.get("type"), "created": item["created"],
        "size": sent.get("size"), "time": sent.get("time") or 0, "target": sent.get("target"),
        "file_path": sent.get("file_path"), "checksum": sent.get("checksum"), "manifest": sent.get("manifest"),
        "incremental": sent.get("incremental"), "base": sent.get("base"), "raw": bool(sent.get("raw")),
        "kept_aside": sent.get("kept_aside"),
        "pruned_source": sent.get("pruned_source") or [], "cmd": sent.get("cmd"), "fsfreeze": fsfreeze,
        "retention": item.get("retention"), "pruned": pruned.get("destroyed") or [], "kept": pruned.get("kept") or [],
    }


def batch_result(items: list, outcomes: list, check: bool = False) -> dict:
    """The run's vmbackup_result: {ok, check, backups: {key: record}}, and a single backup's record at the top."""
    items, outcomes = plain(items), plain(outcomes)
    done: dict = {}
    for found in outcomes or []:
        done.update(found or {})
    records = {item["key"]: record(item, done.get(item["key"])) for item in items}
    result = {"ok": all(r["ok"] for r in records.values()), "check": bool(check), "backups": records}
    if len(records) == 1:
        result.update(next(iter(records.values())), check=bool(check))
    return result


def batch_said(result: dict, check: bool = False) -> list[str]:
    """What the run did (or, in check mode, would do), one line per step; a batch's lines name each backup."""
    said = []
    would = "would " if check else ""
    several = len(result["backups"]) > 1
    for key, one in result["backups"].items():
        lines = []
        if not one["ok"]:
            lines.append("failed at %s: %s" % (one["failed_task"], one["msg"]))
        elif one["target"]:
            how = ("a file backup" if one["type"] == 2 else "an incremental backup from @%s" % one["base"]
                   if one["incremental"] else "a full backup")
            verb = "send" if check else "sent"
            lines.append("%s%s %s to %s:%s as %s" % (would, verb, one["source"], one["node"], one["target"], how))
            if one["raw"]:
                lines.append("encrypted disk: %s raw (zfs send -w), its key stays on %s" % (verb, one["compute_node"]))
            if one["kept_aside"]:
                lines.append("%skeep the broken chain aside as %s" % (would, one["kept_aside"]))
            if check:
                lines.append("the command: %s" % one["cmd"])
        else:
            lines.append("%s: not sent (the send step was skipped)" % one["name"])
        if one["ok"] and one["retention"]:
            deleted = would + "delete " if one["pruned"] else "nothing to delete"
            lines.append("retention %s: %s%s" % (one["retention"], deleted, ", ".join(one["pruned"])))
        said += ["%s: %s" % (key, line) for line in lines] if several else lines
    return said


def batch_failures(result: dict) -> str:
    """Why the run failed: the failed step and reason of each backup that failed (by key, in a batch)."""
    failed = [(key, one) for key, one in result["backups"].items() if not one["ok"]]
    if len(result["backups"]) == 1:
        return "; ".join("%s: %s" % (one["failed_task"], one["msg"]) for _key, one in failed)
    return "%d of %d backups failed: %s" % (len(failed), len(result["backups"]), "; ".join(
        "%s: %s: %s" % (key, one["failed_task"], one["msg"]) for key, one in failed))


class FilterModule:
    def filters(self) -> dict:
        return {"batch_key": batch_key, "batch_items": batch_items, "batch_locate": batch_locate,
                "batch_nodes": batch_nodes, "batch_result": batch_result, "batch_said": batch_said,
                "batch_failures": batch_failures, "variable_problems": variable_problems,
                "utc_stamp": layout.utc_stamp, "pool_or_default": pool_or_default}
