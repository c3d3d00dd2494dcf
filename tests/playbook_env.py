"""Running the playbooks against the test lab: an inventory of its nodes, and what a run reported."""

from __future__ import annotations

import os
import sys
import tempfile

import ansible_runner
import yaml
from ansible_run import ENV, REPO

COMPUTE, BACKUP = "lab-compute", "lab-backup"


def lab_inventory(lab, tmp_path, name: str = "hosts.yml", more_compute: dict | None = None, **compute_vars) -> str:
    """The lab as an inventory: compute node lab-compute (pool <tag>zones), backup node lab-backup (<tag>bkp);
    more_compute: other compute hosts, by name, with their host vars."""
    compute = {"vmbackup_pool": lab.compute_pool, "vmbackup_backend": "zfs"}
    compute.update(compute_vars)
    data = {"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        "children": {"compute": {"hosts": dict({COMPUTE: compute}, **(more_compute or {}))},
                     "backup": {"hosts": {BACKUP: {"vmbackup_zpool": lab.backup_pool}}}}}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


class Run:
    """One playbook run: its status, its vmbackup_result, its failure messages, its task counts; `options`
    are ansible-playbook's own (--check, --diff, --tags ...)."""

    def __init__(self, playbook: str, extravars: dict, inventory: str, *options: str):
        self.runner = ansible_runner.run(
            private_data_dir=tempfile.mkdtemp(prefix="vmbackup-runner-"),
            playbook=os.path.join(REPO, "playbooks", playbook), inventory=inventory, extravars=extravars,
            envvars=ENV, quiet=True, timeout=900, cmdline=" ".join(options) or None)
        self.status = self.runner.status
        self.result: dict = {}
        self.failures: list[tuple[str, str]] = []
        self.changed = 0
        self.tasks: list[str] = []  # the tasks that ran (not skipped), in order
        self.messages: list[str] = []  # what debug tasks said
        for event in self.runner.events:
            data = event.get("event_data", {})
            if event.get("event") in ("runner_on_ok", "runner_on_failed"):
                self.tasks.append(data.get("task", ""))
                if data.get("task_action") == "ansible.builtin.debug":
                    self.messages.append(str(data["res"].get("msg")))
            if event.get("event") == "playbook_on_stats":
                self.result = (data.get("artifact_data") or {}).get("vmbackup_result") or {}
                self.changed = sum((data.get("changed") or {}).values())
            elif event.get("event") == "runner_on_failed" and not data.get("ignore_errors"):
                self.failures.append((data.get("task", ""), str(data["res"].get("msg"))))

    @property
    def ok(self) -> bool:
        return self.status == "successful"

    def __repr__(self) -> str:
        said = ""
        if not self.ok and not self.failures:  # unreachable, a syntax error, a timeout: what the run printed
            said = "\n" + (self.runner.stdout.read() if self.runner.stdout else "")[-3000:]
        return "<%s %s failures=%s result=%s>%s" % (self.runner.config.playbook, self.status, self.failures,
                                                    self.result, said)
