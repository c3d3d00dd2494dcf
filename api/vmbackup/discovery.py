"""Nodes from the Ansible inventory; their pools, state and VMs from the nodes (nodes.yml, discover.yml).

The service stores what the nodes say; a node that does not answer is not operational.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from vmbackup.runner import Runner
from vmbackup.store import Store

ROLES = ("compute", "backup")


def inventory_nodes(inventory: str) -> dict[str, list[str]]:
    """{node name: roles} from the inventory's groups `compute` and `backup`."""
    tool = os.path.join(os.path.dirname(sys.executable), "ansible-inventory")
    out = subprocess.run([tool, "-i", inventory, "--list"], capture_output=True, text=True, check=True,
                         env=dict(os.environ, ANSIBLE_NOCOLOR="1")).stdout
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
    """Runs the two playbooks and applies what they found to the store."""

    def __init__(self, store: Store, runner: Runner, inventory: str):
        self.store = store
        self.runner = runner
        self.inventory = inventory
        self._lock = threading.Lock()

    def run(self, timeout: float = 600) -> dict:
        """Refresh nodes and VMs; return a summary {nodes: {name: operational}, vms: count}."""
        with self._lock:
            roles = inventory_nodes(self.inventory)
            stamp = time.strftime("%Y%m%d%H%M%S") + "-%d" % os.getpid()
            pools = self._play("nodes-" + stamp, "nodes.yml", "stdout_lines", timeout)
            vms = self._play("discover-" + stamp, "discover.yml", "vms", timeout)
            summary = {"nodes": {}, "vms": 0}
            for name, node_roles in roles.items():
                answered = name in pools["ok"] and (name in vms["ok"] or "compute" not in node_roles)
                free = {}
                for line in pools["ok"].get(name, {}).get("stdout_lines", []):
                    pool, _, value = line.partition("\t")
                    free[pool] = {"free": int(value) if value.isdigit() else None}
                self.store.upsert_node({"name": name, "roles": node_roles, "operational": answered,
                                        "pools": free if answered else (self.store.get_node(name) or {}).get("pools"),
                                        "error": pools["errors"].get(name) or vms["errors"].get(name),
                                        "checked": time.time()})
                summary["nodes"][name] = answered
                if name in vms["ok"]:
                    summary["vms"] += self._apply_vms(name, vms["ok"][name].get("vms", []))
            return summary

    def _apply_vms(self, node: str, found: list[dict]) -> int:
        seen = set()
        for vm in found:
            seen.add(vm["uuid"])
            self.store.upsert_vm({"uuid": vm["uuid"], "hostname": vm.get("hostname") or vm["uuid"], "node": node,
                                  "brand": vm.get("brand", "kvm"), "state": vm.get("state", "stopped"),
                                  "disks": vm.get("disks", []), "installed": vm.get("installed", True),
                                  "locked": vm.get("locked", False)})
        for vm in self.store.vms():
            if vm["node"] == node and vm["uuid"] not in seen:
                self.store.mark_vm_deleted(vm["uuid"])
        return len(seen)

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
