"""The collection builds into an artifact that holds the collection alone, installs, and documents itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import ansible_runner
import yaml
from ansible_run import ENV, LOCAL_INVENTORY, REPO

BIN = os.path.dirname(sys.executable)
MODULES = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "collection", "plugins", "modules"))
                 if f.endswith(".py") and not f.startswith("_"))


def test_artifact_holds_only_the_collection_and_installs(tmp_path):
    subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", os.path.join(REPO, "collection"),
                    "--output-path", str(tmp_path)], check=True, capture_output=True)
    (artifact,) = tmp_path.glob("vmbackup-zfs-*.tar.gz")
    with tarfile.open(artifact) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("MANIFEST.json"))
        license_text = tar.extractfile("LICENSE").read().decode()
    assert "MANIFEST.json" in names and "plugins/modules/send.py" in names
    assert {"LICENSE", "README.md", "CHANGELOG.rst", "changelogs/changelog.yaml", "meta/runtime.yml"} <= set(names)
    top = {n.split("/")[0] for n in names}
    assert top <= {"MANIFEST.json", "FILES.json", "README.md", "LICENSE", "CHANGELOG.rst", "changelogs", "meta",
                   "plugins", "docs", "tests"}, top
    assert not any(n.startswith("tests/output") or "__pycache__" in n for n in names)
    assert "GNU GENERAL PUBLIC LICENSE" in license_text and "Version 3" in license_text
    info = manifest["collection_info"]
    assert info["license"] == ["GPL-3.0-or-later"]
    assert info["repository"] == "https://github.com/vmbackup/vmbackup"
    assert info["issues"].startswith(info["repository"])
    # Away from the checkout (its ansible.cfg already provides vmbackup.zfs), as a user would.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_COLLECTIONS_PATH"] = str(tmp_path / "installed")
    subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", str(artifact), "-p",
                    str(tmp_path / "installed")], check=True, capture_output=True, env=env, cwd=str(tmp_path))
    proc = subprocess.run([os.path.join(BIN, "ansible-doc"), "-l", "vmbackup.zfs"], env=env,
                          capture_output=True, text=True, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for module in MODULES:
        assert "vmbackup.zfs.%s" % module in out


def test_ansible_doc_renders_every_module_from_a_checkout():
    assert {"snapshot", "send"} <= set(MODULES)
    for module in MODULES:
        proc = subprocess.run([os.path.join(BIN, "ansible-doc"), "vmbackup.zfs." + module], cwd=REPO,
                              capture_output=True, text=True, env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
        assert proc.returncode == 0 and "OPTIONS" in proc.stdout and "RETURN VALUES" in proc.stdout, proc.stderr


def test_every_collection_python_file_carries_the_spdx_header():
    for folder, _dirs, files in os.walk(os.path.join(REPO, "collection")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as handle:
                    head = handle.read(600)
                assert "SPDX-License-Identifier: GPL-3.0-or-later" in head, os.path.join(folder, name)


def test_the_group_all_names_every_module_and_module_defaults_reach_them(tmp_path):
    with open(os.path.join(REPO, "collection", "meta", "runtime.yml")) as handle:
        runtime = yaml.safe_load(handle)
    assert sorted(runtime["action_groups"]["all"]) == MODULES
    # zpool comes only from module_defaults: the module's answer names the pool it was given.
    play = [{"hosts": "localhost", "gather_facts": False,
             "module_defaults": {"group/vmbackup.zfs.all": {"zpool": "nosuchpool%d" % os.getpid()}},
             "tasks": [{"name": "list with the group's defaults", "vmbackup.zfs.backup_info": {},
                        "register": "found", "ignore_errors": True}]}]
    runner = ansible_runner.run(private_data_dir=str(tmp_path), playbook=play, inventory=LOCAL_INVENTORY, envvars=ENV,
                                quiet=True)
    results = [e for e in runner.events if e.get("event") in ("runner_on_ok", "runner_on_failed")]
    assert len(results) == 1, runner.stdout.read()
    res = results[0]["event_data"]["res"]
    assert results[0]["event"] == "runner_on_failed", res
    assert res["msg"] == "zpool: nosuchpool%d does not exist on this node" % os.getpid(), res
    assert res["cleanup"] == [] and res["stages"] == []
