"""Run vmbackup's modules and playbooks for real, through ansible-runner, and return what they returned."""

from __future__ import annotations

import json
import os
import sys
import tempfile

import ansible_runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {
    "ANSIBLE_COLLECTIONS_PATH": REPO,  # ansible_collections/vmbackup/zfs -> collection/
    "ANSIBLE_CONFIG": os.path.join(REPO, "ansible.cfg"),
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
}
LOCAL_INVENTORY = "localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable


class ModuleResult(dict):
    """A module's return values, plus `failed` and the runner's status."""

    @property
    def failed(self) -> bool:
        return bool(self.get("failed"))


def run_module(module: str, args: dict, check: bool = False, timeout: int = 600, inventory: str | None = None,
               host: str = "localhost") -> ModuleResult:
    """Run one module in a one-task play (on localhost, or on `host` of `inventory`); return its result."""
    task = {"name": "module under test", module: args, "register": "result"}
    if check:
        task["check_mode"] = True
    play = [{"hosts": host, "gather_facts": False, "tasks": [task]}]
    with tempfile.TemporaryDirectory(prefix="vmbackup-runner-") as data_dir:
        runner = ansible_runner.run(private_data_dir=data_dir, playbook=play, inventory=inventory or LOCAL_INVENTORY,
                                    envvars=ENV, quiet=True, timeout=timeout)
        for event in runner.events:
            if event.get("event") in ("runner_on_ok", "runner_on_failed"):
                res = ModuleResult(event["event_data"]["res"])
                res["failed"] = event["event"] == "runner_on_failed"
                return res
        output = runner.stdout.read() if runner.stdout else ""
    raise AssertionError("the module did not run (status %s): %s" % (runner.status, output[-3000:]))


def run_playbook(playbook: str, extravars: dict, inventory: str | None = None, timeout: int = 900,
                 check: bool = False):
    """Run one of playbooks/ with extra vars; return the runner (status, rc, events, stats)."""
    data_dir = tempfile.mkdtemp(prefix="vmbackup-runner-")
    cmdline = "--check" if check else None
    runner = ansible_runner.run(private_data_dir=data_dir, playbook=os.path.join(REPO, "playbooks", playbook),
                                inventory=inventory or LOCAL_INVENTORY, extravars=extravars, envvars=ENV,
                                quiet=True, timeout=timeout, cmdline=cmdline)
    return runner


def dumps(result) -> str:
    return json.dumps(result, indent=2, sort_keys=True, default=str)
