"""Nodes from the Ansible inventory; their pools, state and VMs from the nodes (nodes.yml, discover.yml).

The service stores what the nodes say; a node that does not answer is not operational.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time

from vmbackup.domain import validation
from vmbackup.domain.facts import layout
from vmbackup.engine.runner import Runner, job_environment
from vmbackup.store.store import Store

ROLES = ("compute", "backup")
log = logging.getLogger("vmbackup.discovery")

# What a node may say is checked with the collection's patterns (layout): a node is not trusted (whoever
# controls one, or one VM's name on it, chooses these strings), and they reach records, commands and later runs.
MAX_DISKS = 64


class Refused(ValueError):
    """What a node reported about a VM fails a check: `field` names it."""

    def __init__(self, field: str, problem: str):
        super().__init__("%s: %s" % (field, problem))
        self.field = field


def _integer(value, field: str, low: int, high: int | None = None, nullable: bool = False) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise Refused(field, "%r is not a whole number%s" % (value, " from %d to %d" % (low, high) if high else
                                                              " of at least %d" % low))
    return value


def checked_vm(vm: dict, node: str) -> dict:
    """The store's record of a VM a node reported, every field checked; Refused names the first bad one."""
    if not isinstance(vm, dict):
        raise Refused("vm", "not an object")
    uuid = vm.get("uuid")
    if not validation.is_uuid(uuid):
        raise Refused("uuid", "%r is not a uuid" % (uuid,))
    uuid = uuid.lower()
    hostname = vm.get("hostname") or uuid
    if layout.invalid_hostname(hostname):
        raise Refused("hostname", "%r is not a hostname (RFC 1123, at most 253 characters)" % (hostname,))
    if validation.is_uuid(hostname) and hostname.lower() != uuid:
        raise Refused("hostname", "%r is another VM's uuid" % hostname)
    brand, state = vm.get("brand", "kvm"), vm.get("state", "stopped")
    for field, value in (("brand", brand), ("state", state)):
        if not isinstance(value, str) or not layout.WORD_RE.fullmatch(value):
            raise Refused(field, "%r is not a word of lower-case letters, digits, '_' or '-'" % (value,))
    for field in ("installed", "locked"):
        if not isinstance(vm.get(field, False), bool):
            raise Refused(field, "%r is not true or false" % (vm.get(field),))
    qga = vm.get("qga_socket")
    if qga is not None and layout.invalid_path(qga):
        raise Refused("qga_socket", "%r is not an absolute path" % (qga,))
    disks = vm.get("disks", [])
    if not isinstance(disks, list) or len(disks) > MAX_DISKS:
        raise Refused("disks", "not a list of at most %d disks" % MAX_DISKS)
    checked, numbers = [], set()
    for disk in disks:
        if not isinstance(disk, dict):
            raise Refused("disks", "a disk is not an object")
        number = _integer(disk.get("disk_id"), "disk_id", 1, MAX_DISKS)
        if number in numbers:
            raise Refused("disk_id", "disk %d is reported twice" % number)
        numbers.add(number)
        dataset = disk.get("dataset")
        if not isinstance(dataset, str) or len(dataset) > 255 or not layout.DATASET_RE.fullmatch(dataset) \
                or ".." in dataset.split("/"):
            raise Refused("dataset", "disk %d: %r is not a ZFS dataset name" % (number, dataset))
        checked.append({"disk_id": number, "dataset": dataset,
                        "size": _integer(disk.get("size"), "size", 0, 2**63, nullable=True),
                        "snapshots": _integer(disk.get("snapshots"), "snapshots", 0, nullable=True),
                        "backup_snapshots": _integer(disk.get("backup_snapshots"), "backup_snapshots", 0,
                                                     nullable=True)})
    return {"uuid": uuid, "hostname": hostname, "node": node, "brand": brand, "state": state,
            "disks": sorted(checked, key=lambda d: d["disk_id"]), "installed": vm.get("installed", True),
            "locked": vm.get("locked", False), "qga_socket": qga}


def checked_pools(lines: list, node: str) -> dict:
    """{pool: {free}} from nodes.yml's `zfs get -Hp available` lines; a line that fails is left out."""
    pools = {}
    for line in lines if isinstance(lines, list) else []:
        pool, _, value = str(line).partition("\t")
        if not validation.is_pool_name(pool):
            log.warning("node %s: pool %r skipped: not a pool name", node, pool)
            continue
        pools[pool] = {"free": int(value) if re.fullmatch(r"[0-9]{1,20}", value) else None}
    return pools


def inventory_nodes(inventory: str) -> dict[str, list[str]]:
    """{node name: roles} from the inventory's groups `compute` and `backup`."""
    tool = os.path.join(os.path.dirname(sys.executable), "ansible-inventory")
    # The minimal environment of a job: an inventory plugin or script must not read the AWX token or the
    # webhook secret out of the service's environment.
    out = subprocess.run([tool, "-i", inventory, "--list"], capture_output=True, text=True, check=True,
                         env=job_environment({"ANSIBLE_NOCOLOR": "1"})).stdout
    data = json.loads(out)
    nodes: dict[str, list[str]] = {}
    for role in ROLES:
        for host in _hosts(data, role):
            nodes.setdefault(host, []).append(role)
    return nodes


def _hosts(data: dict, group: str) -> list[str]:
    entry = data.get(group) or {}
    hosts = list(entry.get("hosts", []))
    for child in entry.get("children", []):
        hosts += _hosts(data, child)
    return hosts


class Discovery:
    """Runs the two playbooks and applies what they found to the store.

    A VM belongs to one node. A node may be in hostile hands and report any uuid: if it could take over
    another node's VM, that VM's scheduled backups would pull its data (breaking the victim's chain, its
    retention later destroying the real backups) and a restore of the victim would stream the victim's data
    to it. So a uuid that two nodes report in one discovery is refused for both (records kept as they were, a
    log line, a `vm_conflict` event), and a uuid moves from node A to node B only once A answered a discovery
    without it (a migration, logged)."""

    def __init__(self, store: Store, runner: Runner, inventory: str, events=None):
        self.store = store
        self.runner = runner
        self.inventory = inventory
        self.events = events  # Events: vm_conflict
        self._lock = threading.Lock()

    def run(self, timeout: float = 600) -> dict:
        """Refresh nodes and VMs; return a summary {nodes: {name: operational}, vms: count}."""
        with self._lock:
            roles = inventory_nodes(self.inventory)
            stamp = time.strftime("%Y%m%d%H%M%S") + "-%d" % os.getpid()
            pools = self._play("nodes-" + stamp, "nodes.yml", "stdout_lines", timeout)
            vms = self._play("discover-" + stamp, "discover.yml", "vms", timeout)
            summary = {"nodes": {}, "vms": 0, "skipped": 0, "conflicts": 0}
            reports: dict[str, list] = {}
            for name, node_roles in roles.items():
                answered = name in pools["ok"] and (name in vms["ok"] or "compute" not in node_roles)
                free = checked_pools(pools["ok"].get(name, {}).get("stdout_lines", []), name)
                self.store.upsert_node({"name": name, "roles": node_roles, "operational": answered,
                                        "pools": free if answered else (self.store.get_node(name) or {}).get("pools"),
                                        "error": pools["errors"].get(name) or vms["errors"].get(name),
                                        "checked": time.time()})
                summary["nodes"][name] = answered
                if name in vms["ok"]:
                    found = vms["ok"][name].get("vms", [])
                    reports[name] = found if isinstance(found, list) else []
            for key, count in self.apply(reports, set(roles)).items():
                summary[key] += count
            for hostname, uuids in self.store.hostname_clashes().items():
                log.warning("hostname %s is used by %d VMs (%s): each is reached by its uuid only",
                            hostname, len(uuids), ", ".join(uuids))
            return summary

    def apply(self, reports: dict[str, list], present: set[str]) -> dict[str, int]:
        """Store what the nodes that answered reported ({node: VMs}); `present`: the inventory's nodes.
        Return the counts {vms, skipped, conflicts}."""
        claims: dict[str, set[str]] = {}
        for name, found in reports.items():
            for vm in found:
                uuid = vm.get("uuid") if isinstance(vm, dict) else None
                if isinstance(uuid, str) and validation.is_uuid(uuid):
                    claims.setdefault(uuid.lower(), set()).add(name)
        contested = {uuid: sorted(nodes) for uuid, nodes in claims.items() if len(nodes) > 1}
        for uuid, nodes in sorted(contested.items()):
            log.warning("VM %s is reported by %d nodes (%s): refused for each, its record kept as it was",
                        uuid, len(nodes), ", ".join(nodes))
            if self.events is not None:
                self.events.emit("vm_conflict", vm_uuid=uuid, nodes=nodes)
        counts = {"vms": 0, "skipped": 0, "conflicts": len(contested)}
        for name, found in reports.items():
            stored, skipped = self._apply_vms(name, found, contested, set(reports), present)
            counts["vms"] += stored
            counts["skipped"] += skipped
        return counts

    def _apply_vms(self, node: str, found: list, contested: dict, answered: set[str],
                   present: set[str]) -> tuple[int, int]:
        """Store the VMs a node reported that pass every check and are its own; return (stored, skipped).
        `contested`: uuids other nodes reported too; `answered`: the nodes whose VM lists this discovery has;
        `present`: the nodes of the inventory."""
        seen, stored, skipped = set(), 0, 0
        for vm in found if isinstance(found, list) else []:
            try:
                record = checked_vm(vm, node)
            except Refused as refusal:
                skipped += 1
                who = vm.get("uuid") if isinstance(vm, dict) else None
                log.warning("node %s: VM %r skipped: %s", node, who if isinstance(who, str) else "?", refusal)
                if isinstance(who, str) and validation.is_uuid(who):
                    seen.add(who.lower())  # still there, only its report is refused: not deleted
                continue
            seen.add(record["uuid"])
            if record["uuid"] in contested:
                skipped += 1
                continue
            held = self.store.get_vm(record["uuid"])
            owner = (held or {}).get("node")
            if held and not held.get("deleted") and owner not in (None, node):
                if owner not in answered and owner in present:
                    skipped += 1
                    log.warning("node %s: VM %s skipped: node %s holds it and has not answered since; it moves "
                                "once %s reports without it", node, record["uuid"], owner, owner)
                    continue
                log.warning("VM %s moved from node %s to node %s (a migration)", record["uuid"], owner, node)
            self.store.upsert_vm(record)
            stored += 1
        for vm in self.store.vms():
            if vm["node"] == node and vm["uuid"] not in seen:
                self.store.mark_vm_deleted(vm["uuid"])
        return stored, skipped

    def _play(self, ident: str, playbook: str, key: str, timeout: float) -> dict:
        """Run a playbook and return, per host, the first task result holding `key`, and the errors."""
        done = threading.Event()
        self.runner.start(ident, playbook, {}, lambda _result: done.set())
        done.wait(timeout)
        ok: dict[str, dict] = {}
        errors: dict[str, str] = {}
        for event in self.runner.events(ident):
            data = event.get("event_data", {})
            res = data.get("res") or {}
            if event.get("event") == "runner_on_ok" and key in res:
                ok.setdefault(data.get("host"), res)
            elif event.get("event") in ("runner_on_failed", "runner_on_unreachable"):
                errors[data.get("host")] = str(res.get("msg", "failed"))
        for host in errors:
            ok.pop(host, None)
        self.runner.remove(ident)
        return {"ok": ok, "errors": errors}
