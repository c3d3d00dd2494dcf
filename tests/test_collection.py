"""The collection builds into an artifact that holds the collection alone, installs, and documents itself."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile

from ansible_run import REPO

BIN = os.path.dirname(sys.executable)
MODULES = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "collection", "plugins", "modules"))
                 if f.endswith(".py") and not f.startswith("_"))


def test_artifact_holds_only_the_collection_and_installs(tmp_path):
    subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", os.path.join(REPO, "collection"),
                    "--output-path", str(tmp_path)], check=True, capture_output=True)
    (artifact,) = tmp_path.glob("vmbackup-zfs-*.tar.gz")
    names = tarfile.open(artifact).getnames()
    assert "MANIFEST.json" in names and "plugins/modules/send.py" in names
    top = {n.split("/")[0] for n in names}
    assert top <= {"MANIFEST.json", "FILES.json", "README.md", "meta", "plugins", "docs"}, top
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
