"""The one description of vmbackup's AWX job templates and their variables. awx/job_templates.yml and the
survey specs in awx/surveys/ are generated from it (`python -m vmbackup.engine.awx_templates write`; a test checks
that the committed files are these), and the awx engine builds each launch's extra_vars from it, so what
the API sends and what AWX asks cannot drift apart.

A variable is either a survey question (`question` set: an operator answers it in AWX, and AWX checks the
launch's value against its type, min/max and choices) or a prompted one (given as extra variables at launch:
the template prompts for variables on launch). AWX has no question type for booleans, lists of free strings or
lists of dicts, so those are always prompted.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

from vmbackup.domain import paths

AWX_DIR = os.path.join(paths.PROJECT, "awx")
# Python's type of a value, per kind of variable (bool is not an int here: AWX refuses True for an integer).
KINDS = {"str": (str,), "int": (int,), "bool": (bool,), "list": (list,), "dict": (dict,)}
# Values a progress file takes only on this machine: an AWX job runs on an execution node.
LOCAL_ONLY = ("vmbackup_progress_file", "progress_file")


@dataclass(frozen=True)
class Variable:
    name: str
    kind: str  # str, int, bool, list (of str), dict-list (list of dicts)
    required: bool = False  # AWX refuses a launch without it (a question) / the engine never sends it without
    question: str = ""  # the survey question's title; empty: a prompted variable
    description: str = ""
    default: object = None  # a question's default: never on a required question (AWX requires it anyway)
    low: int | None = None  # min (a str's length, an int's value)
    high: int | None = None
    choices: tuple = ()

    def awx_type(self) -> str:
        """The survey question type AWX checks this variable's value with."""
        if self.choices:
            return "multiplechoice"
        return {"str": "text", "int": "integer"}[self.kind]

    def survey_question(self) -> dict:
        spec: dict = {"question_name": self.question, "question_description": self.description,
                      "required": self.required, "type": self.awx_type(), "variable": self.name}
        if self.choices:
            spec["choices"] = list(self.choices)
        else:
            spec["min"], spec["max"] = self.low, self.high
        if self.default is not None:
            spec["default"] = self.default
        return spec


@dataclass(frozen=True)
class Template:
    key: str  # the playbook file name the API's job names (backup_batch.yml: a batch of backup.yml)
    name: str  # the job template's name in AWX
    playbook: str
    survey_name: str = ""
    survey_description: str = ""
    variables: tuple[Variable, ...] = field(default=())
    ask_variables_on_launch: bool = True  # the API's jobs need it: booleans and lists are prompted

    @property
    def survey_file(self) -> str:
        return self.key.replace(".yml", ".json") if self.questions() else ""

    def questions(self) -> list[Variable]:
        return [v for v in self.variables if v.question]

    def variable(self, name: str) -> Variable | None:
        return next((v for v in self.variables if v.name == name), None)

    def survey(self) -> dict:
        return {"name": self.survey_name, "description": self.survey_description,
                "spec": [v.survey_question() for v in self.questions()]}


NODE = "The backup node: an inventory host of the group backup."
POOL = "The pool on the backup node; leave empty for the node's vmbackup_zpool (else zones)."


def _node(text: str = NODE) -> Variable:
    return Variable("node", "str", True, "Backup node", text, low=1, high=255)


def _vm(made_of: str) -> tuple[Variable, ...]:
    """hostname, vm_uuid and disk_id: the VM (or the VM the backups were made of) and its disk."""
    if made_of:
        return (Variable("hostname", "str", False, "VM", "The VM the %s made of: its original hostname or uuid "
                         "(or give VM uuid)." % made_of, low=0, high=255),
                Variable("vm_uuid", "str", False, "VM uuid", "The uuid of the VM the %s made of, instead of VM."
                         % made_of, low=0, high=36),
                Variable("disk_id", "int", False, "Disk", "The disk the %s made of, counted from 1." % made_of,
                         default=1, low=1, high=64))
    return (Variable("hostname", "str", False, "VM", "The VM's hostname or uuid (or give its uuid in VM uuid).",
                     low=0, high=255),
            Variable("vm_uuid", "str", False, "VM uuid", "The VM's uuid, instead of VM.", low=0, high=36),
            Variable("disk_id", "int", False, "Disk", "The VM's disk, counted from 1.", default=1, low=1, high=64))


def _pool() -> Variable:
    return Variable("zpool", "str", False, "Backup pool", POOL, low=0, high=255)


def _bwlimit() -> Variable:
    return Variable("bwlimit", "int", False, "Rate limit", "Bytes per second; 0 is unlimited.", default=0,
                    low=0, high=10**12)


COMPRESSIONS = ("0", "1", "2", "3", "none", "gzip", "bzip2", "xz", "zstd", "lz4")
# What one backup takes; a batch's items take the same (prompted, inside `backups`).
BACKUP_VARIABLES = (
    _node(), *_vm(""),
    Variable("bkpdef", "str", True, "Backup definition", "The definition's name (1 to 8 letters, digits or ._-); "
             "the backup is named <bkpdef>-YYYYMMDD_HHMMSS.", low=1, high=8),
    Variable("type", "int", False, "Backup type", "1 a dataset on the backup node (incremental), 2 a full stream "
             "in a file.", default=1, low=1, high=2),
    Variable("compression", "str", False, "Compression", "File backups only: 0 or none, 1 or gzip, 2 or bzip2, "
             "3 or xz, zstd, lz4.", default="0", choices=COMPRESSIONS),
    _bwlimit(),
    Variable("retention", "int", False, "Retention", "Keep this many backups of the definition; 0 keeps all.",
             default=0, low=0, high=65536),
    _pool(),
    Variable("compute_node", "str", description="The compute node that holds the VM (found when not given)."),
    Variable("bkpname", "str", description="The backup's name (the API names it; default <bkpdef>-<UTC time>)."),
    Variable("fsfreeze", "bool", description="Freeze the guest's filesystems around the snapshot."),
    Variable("keep_snapshot", "bool", description="Keep the sent snapshot on the compute node (true); false keeps "
             "only a bookmark where its ZFS has them."),
    Variable("qga_socket", "str", description="The guest agent socket (found when not given)."),
    Variable("protect", "list", description="Backup names retention must not delete."),
)

TEMPLATES: tuple[Template, ...] = (
    Template("backup.yml", "vmbackup: back up a VM disk", "playbooks/backup.yml", "Back up a VM disk",
             "Snapshot a VM disk and pull it to a backup node.", BACKUP_VARIABLES),
    Template("backup_batch.yml", "vmbackup: back up a batch of VM disks", "playbooks/backup_batch.yml",
             variables=(
                 Variable("node", "str", True, description="The backup node every backup of the batch goes to."),
                 Variable("backups", "dict-list", True, description="The backups: each a dict of the backup "
                          "template's variables (an item that lacks node, zpool, compute_node, bkpdef, type, "
                          "compression, bwlimit, retention, fsfreeze, keep_snapshot or protect takes the top-level "
                          "one)."),
                 *[Variable(v.name, v.kind, description=v.description) for v in BACKUP_VARIABLES
                   if v.name in ("zpool", "compute_node", "bkpdef", "type", "compression", "bwlimit", "retention",
                                 "fsfreeze", "keep_snapshot", "protect")],
                 Variable("vmbackup_parallel", "int", description="How many compute nodes work at once (4)."))),
    Template("restore.yml", "vmbackup: restore a backup", "playbooks/restore.yml", "Restore a backup",
             "Restore a backup into a VM disk; the target VM must be stopped. The target disk is replaced.", (
                 _node(),
                 Variable("bkpname", "str", True, "Backup", "The backup's name, <bkpdef>-YYYYMMDD_HHMMSS.",
                          low=1, high=24),
                 Variable("hostname", "str", False, "Backed-up VM", "The VM the backup was made of: its original "
                          "hostname or uuid (or give Backed-up VM uuid).", low=0, high=255),
                 Variable("vm_uuid", "str", False, "Backed-up VM uuid", "The uuid of the VM the backup was made "
                          "of, instead of Backed-up VM.", low=0, high=36),
                 Variable("disk_id", "int", False, "Backed-up disk", "The disk the backup was made of, counted "
                          "from 1.", default=1, low=1, high=64),
                 Variable("target_hostname", "str", False, "Target VM", "The VM to restore into: hostname or uuid "
                          "(or give Target VM uuid).", low=0, high=255),
                 Variable("target_vm_uuid", "str", False, "Target VM uuid", "The uuid of the VM to restore into, "
                          "instead of Target VM.", low=0, high=36),
                 Variable("target_disk_id", "int", True, "Target disk", "The target VM's disk to replace, counted "
                          "from 1.", low=1, high=64),
                 _bwlimit(), _pool(),
                 Variable("type", "int", description="1 a dataset backup, 2 a file backup (found when not given)."),
                 Variable("file_path", "str", description="A file backup's file (found when not given)."),
                 Variable("compute_node", "str", description="The target VM's compute node."),
                 Variable("target_compute_node", "str", description="The target VM's compute node."),
                 Variable("force", "bool", description="With false, refuse when the target disk has snapshots."))),
    Template("delete.yml", "vmbackup: delete backups", "playbooks/delete.yml", "Delete backups",
             "Delete one or several backups of a VM disk from a backup node.", (
                 _node(), *_vm("backups were"),
                 # A text question: several names are one string, comma-separated (the playbook splits it).
                 Variable("bkpname", "str", True, "Backups", "A backup name, or several separated by commas.",
                          low=1, high=4096),
                 _pool(),
                 Variable("type", "int", description="1 dataset backups, 2 file backups (both when not given)."),
                 Variable("compute_node", "str", description="The VM's compute node, while it exists."))),
    Template("prune.yml", "vmbackup: prune backups", "playbooks/prune.yml", "Prune backups",
             "Delete the oldest backups of a definition beyond its retention.", (
                 _node(), *_vm("backups were"),
                 Variable("bkpdef", "str", True, "Backup definition", "The definition whose backups are pruned.",
                          low=1, high=8),
                 Variable("retention", "int", True, "Retention", "Keep this many of the newest backups; 0 keeps "
                          "all.", low=0, high=65536),
                 _pool(),
                 Variable("type", "int", description="1 dataset backups, 2 file backups (both when not given)."),
                 Variable("protect", "list", description="Backup names never to delete."),
                 Variable("compute_node", "str", description="The VM's compute node, while it exists."))),
    Template("verify.yml", "vmbackup: verify a backup", "playbooks/verify.yml", "Verify a backup",
             "Restore a backup into scratch space on its backup node and check it; the VM is not touched.", (
                 _node(),
                 Variable("bkpname", "str", True, "Backup", "The backup's name, <bkpdef>-YYYYMMDD_HHMMSS.",
                          low=1, high=24),
                 *_vm("backup was"),
                 _pool(),
                 Variable("expected_digest", "str", False, "Expected digest", "The digest recorded at the backup's "
                          "last good verification (hex digits); leave empty if none.", low=0, high=128),
                 _bwlimit(),
                 Variable("type", "int", description="1 a dataset backup, 2 a file backup (found when not given)."),
                 Variable("compute_node", "str", description="The VM's compute node (found when not given)."))),
    Template("sync.yml", "vmbackup: list the backups of the nodes", "playbooks/sync.yml", variables=(
        Variable("sync_nodes", "dict-list", True, description="The backup nodes and pools to list: "
                 "[{node, pools}]."),)),
    Template("discover.yml", "vmbackup: discover VMs", "playbooks/discover.yml", variables=(
        Variable("hostname", "str", description="Only this VM, by hostname or uuid."),
        Variable("backend", "str", description="auto, vmadm, libvirt or zfs."))),
    Template("nodes.yml", "vmbackup: node pools", "playbooks/nodes.yml"),
)
BY_KEY = {t.key: t for t in TEMPLATES}


class LaunchError(ValueError):
    """What the API would send is not what the template takes: a drift between the service and this file."""


def template_for(playbook: str, extravars: dict) -> Template:
    """The template a job goes to: a batch of backups (`backups`) to the batch template, else its playbook's."""
    if playbook in ("backup.yml", "backup_batch.yml") and "backups" in extravars:
        return BY_KEY["backup_batch.yml"]
    if playbook not in BY_KEY:
        raise LaunchError("no AWX job template is described for %s (api/vmbackup/engine/awx_templates.py)" % playbook)
    return BY_KEY[playbook]


def _clean(values: dict) -> dict:
    """Values the job on AWX uses: no local progress file, no None (AWX's typed questions refuse null, and the
    playbooks read an absent variable as a null one)."""
    return {k: v for k, v in values.items() if v is not None and k not in LOCAL_ONLY}


def launch_vars(template: Template, extravars: dict) -> dict:
    """The launch's extra_vars for `template` from a task's extra vars, each checked against the description."""
    values = _clean(extravars)
    if template.key == "backup_batch.yml" and isinstance(values.get("backups"), list):
        values["backups"] = [_clean(item) if isinstance(item, dict) else item for item in values["backups"]]
    if template.key == "delete.yml" and isinstance(values.get("bkpname"), list):
        values["bkpname"] = ",".join(values["bkpname"])  # the survey's text question: names, comma-separated
    problems = check(template, values)
    if problems:
        raise LaunchError("the launch of AWX job template %r would be refused: %s"
                          % (template.name, "; ".join(problems)))
    return values


def check(template: Template, values: dict) -> list[str]:
    """Why these values do not fit the template's description ([] if they do)."""
    problems = []
    for variable in template.variables:
        if variable.name not in values:
            if variable.required:
                problems.append("%s: missing, and the template requires it" % variable.name)
            continue
        value = values[variable.name]
        if variable.kind == "dict-list":
            fits = isinstance(value, list) and all(isinstance(v, dict) for v in value)
        elif variable.kind == "list":
            fits = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            fits = type(value) in KINDS[variable.kind]
        if not fits:
            problems.append("%s: %r is not of kind %s" % (variable.name, value, variable.kind))
            continue
        if variable.choices and value not in variable.choices:
            problems.append("%s: %r is not one of %s" % (variable.name, value, ", ".join(variable.choices)))
        measure = len(value) if variable.kind == "str" else value
        if variable.kind in ("str", "int") and variable.low is not None and measure < variable.low:
            problems.append("%s: %r is below the template's min %d" % (variable.name, value, variable.low))
        if variable.kind in ("str", "int") and variable.high is not None and measure > variable.high:
            problems.append("%s: %r is above the template's max %d" % (variable.name, value, variable.high))
    unknown = sorted(set(values) - {v.name for v in template.variables})
    if unknown:
        problems.append("%s: not a variable of the template (add it to api/vmbackup/engine/awx_templates.py)"
                        % ", ".join(unknown))
    return problems


# -- the generated files ----------------------------------------------------------------------------------------
JOB_TEMPLATES_HEAD = """\
---
# GENERATED from api/vmbackup/engine/awx_templates.py (python -m vmbackup.engine.awx_templates write): edit that file.
# AWX/Tower objects for vmbackup, as code: run this playbook against your AWX with the awx.awx
# collection (see docs/AWX.md):
#   ansible-galaxy collection install awx.awx
#   CONTROLLER_HOST=https://awx.example.com CONTROLLER_OAUTH_TOKEN=... \\
#     ansible-playbook awx/job_templates.yml -e vmbackup_scm_url=https://git.example.com/ops/vmbackup.git
# It creates the execution environment, the project (this repository), an inventory fed from the
# project's inventory/example/hosts.yml (or your own file), and one job template per kind of job, with the
# surveys in awx/surveys/. Every template prompts for variables on launch: the REST API's jobs pass
# booleans and lists (fsfreeze, force, protect, backups) that no survey question takes.
- name: Create the vmbackup project, inventory and job templates in AWX
  hosts: localhost
  gather_facts: false
  vars:
    vmbackup_organization: Default
    vmbackup_scm_url: https://git.example.com/ops/vmbackup.git
    vmbackup_scm_branch: main
    vmbackup_inventory_file: inventory/example/hosts.yml
    vmbackup_ee_image: registry.example.com/ops/vmbackup-ee:0.1.0   # built from execution-environment.yml
    vmbackup_credential: vmbackup nodes   # a Machine credential (ssh key) for the compute and backup nodes
    vmbackup_job_templates:
"""

JOB_TEMPLATES_TAIL = """\
  tasks:
    - name: Register the execution environment
      awx.awx.execution_environment:
        name: vmbackup
        image: "{{ vmbackup_ee_image }}"
        organization: "{{ vmbackup_organization }}"
        pull: missing

    - name: Create the project (its sync installs collections/requirements.yml)
      awx.awx.project:
        name: vmbackup
        organization: "{{ vmbackup_organization }}"
        scm_type: git
        scm_url: "{{ vmbackup_scm_url }}"
        scm_branch: "{{ vmbackup_scm_branch }}"
        scm_update_on_launch: true
        default_environment: vmbackup
        wait: true

    - name: Create the inventory
      awx.awx.inventory:
        name: vmbackup
        organization: "{{ vmbackup_organization }}"

    - name: Feed it from the project's inventory file
      awx.awx.inventory_source:
        name: vmbackup nodes
        inventory: vmbackup
        organization: "{{ vmbackup_organization }}"
        source: scm
        source_project: vmbackup
        source_path: "{{ vmbackup_inventory_file }}"
        overwrite: true
        update_on_launch: true

    - name: Create a job template per kind of job
      awx.awx.job_template:
        name: "{{ item.name }}"
        organization: "{{ vmbackup_organization }}"
        job_type: run
        project: vmbackup
        inventory: vmbackup
        playbook: "{{ item.playbook }}"
        credentials: ["{{ vmbackup_credential }}"]
        execution_environment: vmbackup
        # Prompt for variables on launch: without it AWX drops every variable no survey question asks
        # (listed in the launch answer's ignored_fields), and the API fails such a job at once.
        # Job type check runs the playbook with --check; tags pick steps.
        ask_variables_on_launch: "{{ item.ask_variables_on_launch }}"
        ask_job_type_on_launch: true
        ask_tags_on_launch: true
        ask_skip_tags_on_launch: true
        allow_simultaneous: true
        survey_enabled: "{{ item.survey is defined }}"
        survey_spec: >-
          {{ lookup('ansible.builtin.file', 'surveys/' ~ item.survey) | from_json
             if item.survey is defined else omit }}
      loop: "{{ vmbackup_job_templates }}"
      loop_control:
        label: "{{ item.name }}"
"""


def job_templates_yml() -> str:
    lines = []
    for template in TEMPLATES:
        item = {"name": template.name, "playbook": template.playbook}
        if template.survey_file:
            item["survey"] = template.survey_file
        item["ask_variables_on_launch"] = template.ask_variables_on_launch
        lines.append("      - {%s}\n" % ", ".join("%s: %s" % (k, json.dumps(v)) for k, v in item.items()))
    return JOB_TEMPLATES_HEAD + "".join(lines) + JOB_TEMPLATES_TAIL


def generated_files() -> dict[str, str]:
    """Path under awx/ -> the text it must hold."""
    files = {"job_templates.yml": job_templates_yml()}
    for template in TEMPLATES:
        if template.survey_file:
            files["surveys/" + template.survey_file] = json.dumps(template.survey(), indent=2) + "\n"
    return files


def write(awx_dir: str = AWX_DIR) -> list[str]:
    written = []
    for name, text in generated_files().items():
        with open(os.path.join(awx_dir, name), "w") as handle:
            handle.write(text)
        written.append(name)
    return written


if __name__ == "__main__":
    if sys.argv[1:] != ["write"]:
        sys.exit("usage: python -m vmbackup.engine.awx_templates write   (regenerates awx/job_templates.yml and "
                 "awx/surveys/*.json)")
    print("\n".join(write()))
