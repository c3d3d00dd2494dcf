"""A compromised compute node on the OpenZFS lab: its `zfs send` answers with streams of its own choosing (a
wrapper ahead of /usr/sbin/zfs on its PATH, hostile only for the VM disks listed in /etc/vmbackup-hostile).
What it sends is a stranger's data to the backup node: nothing of it mounts outside the backup layout, runs,
or lands beside the VM's own backup, and what is not the disk's own stream fails the backup with a message
that names the node.

Attacks (each a real backup.yml run over ssh between guests):
- `props`: the disk's own stream with its properties (`zfs send -p`), the disk (a file system) carrying
  `mountpoint=/root/pwned`, `exec=on`, `setuid=on` and a file: received, but with no mountpoint of its own,
  `canmount=noauto`, read-only, exec, setuid and devices off; the backup node's `zfs mount -a` mounts nothing.
- `swap`: a file system with those properties where the disk is a zvol: refused (type), nothing left.
- `replicate`: a replication stream (`-R`) of a tree, named as the snapshot asked for: refused (datasets below
  the target), nothing left.
- `resume`: the disk's stream cut after 4 MiB (the receive, resumable, keeps a token), then every `zfs send -t`
  answered with a file system carrying `mountpoint=/root/pwned`, exec and setuid: the resumed receive (the
  same -u and overrides) takes none of it, the backup fails, and nothing mounts or lands under /root/pwned.
"""

from __future__ import annotations

import os
import uuid

import pytest
from node_env import backup_state, new_vm, remember
from playbook_env import Run

from vmbackup_lab.lab import LabVM

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="QEMU taps need root")

WRAPPER = r"""#!/bin/sh
# A compromised compute node (vmbackup's tests): `zfs send` of a disk listed in /etc/vmbackup-hostile
# answers with what the list says.
if [ "$1" = send ]; then
  if [ "$2" = -t ] && grep -q ' resume$' /etc/vmbackup-hostile 2>/dev/null; then
    echo "$3" >> /var/log/vmbackup-hostile-resume.log
    /usr/sbin/zfs snapshot zones/evil-fs@resume 2>/dev/null; exec /usr/sbin/zfs send -p zones/evil-fs@resume
  fi
  for last; do :; done
  disk="${last%%@*}"; snap="${last#*@}"
  mode=$(awk -v d="$disk" '$1 == d {print $2}' /etc/vmbackup-hostile 2>/dev/null)
  case "$mode" in
    props) exec /usr/sbin/zfs send -p "$last" ;;
    swap) /usr/sbin/zfs snapshot zones/evil-fs@"$snap" 2>/dev/null; exec /usr/sbin/zfs send -p zones/evil-fs@"$snap" ;;
    replicate) /usr/sbin/zfs snapshot -r zones/evil-tree@"$snap" 2>/dev/null
               exec /usr/sbin/zfs send -R zones/evil-tree@"$snap" ;;
    resume) case "$2" in -n*) exec /usr/sbin/zfs "$@" ;; esac  # the estimate stays true
            /usr/sbin/zfs "$@" | head -c 4194304; exit 1 ;;
  esac
fi
exec /usr/sbin/zfs "$@"
"""
PWNED = "/root/pwned"


@pytest.fixture(scope="module")
def hostile(ozlab):
    compute = ozlab.node("compute")
    compute.run(["sh", "-c", "cat > /usr/local/sbin/zfs && chmod 755 /usr/local/sbin/zfs"], input=WRAPPER)
    compute.run(["sh", "-c", "zfs list zones/evil-fs >/dev/null 2>&1 || { "
                 "zfs create -o mountpoint=%s -o exec=on -o setuid=on zones/evil-fs && "
                 "printf '#!/bin/sh\\necho pwned\\n' > %s/tar && chmod 4755 %s/tar && "
                 "zfs create -o mountpoint=none zones/evil-tree && zfs create zones/evil-tree/child; }"
                 % (PWNED, PWNED, PWNED)])
    if compute.zfs("get", "-H", "-o", "value", "mounted", "zones/evil-fs").strip() == "yes":  # a lab used before
        compute.run(["zfs", "unmount", "zones/evil-fs"])  # its folder /root/pwned stays empty on the compute node
    yield ozlab
    compute.run(["rm", "-f", "/usr/local/sbin/zfs", "/etc/vmbackup-hostile", "/var/log/vmbackup-hostile-resume.log"])


def make_hostile(node, vm: LabVM, mode: str) -> None:
    node.run(["sh", "-c", 'echo "$1 $2" >> /etc/vmbackup-hostile', "sh", vm.disk(node.pools[0], 0), mode])


def filesystem_vm(node) -> LabVM:
    """A VM whose disk is a file system (as an OS zone's) with a hostile mountpoint on it."""
    vm = remember(node, LabVM(str(uuid.uuid4()), "h%s.lab" % uuid.uuid4().hex[:6], size_mb=64))
    disk = vm.disk(node.pools[0], 0)
    node.run(["zfs", "create", "-o", "vmbackup:hostname=" + vm.hostname, "-o", "vmbackup:brand=kvm",
              "-o", "vmbackup:state=stopped", "-o", "quota=64M", disk])
    node.run(["sh", "-c", 'printf "#!/bin/sh\\necho pwned\\n" > "$(zfs get -H -o value mountpoint "$1")/tar"',
              "sh", disk])
    node.run(["zfs", "set", "mountpoint=%s-%s" % (PWNED, vm.uuid[:8]), "exec=on", "setuid=on", disk])
    node.run(["zfs", "unmount", disk])
    return vm


def mounts(node) -> list[str]:
    return [line.split()[1] for line in node.run(["cat", "/proc/mounts"]).stdout.splitlines()
            if line.split()[2] == "zfs"]


def backup(ozlab, vm: LabVM) -> Run:
    return Run("backup.yml", {"node": ozlab.node("backup").name, "hostname": vm.hostname, "bkpdef": "h",
                              "bkpname": "h-20261205_010000"}, ozlab.inventory)


def test_the_disks_own_stream_with_hostile_properties_never_mounts_or_runs(hostile):
    compute, backup_node = hostile.node("compute"), hostile.node("backup")
    vm = filesystem_vm(compute)
    make_hostile(compute, vm, "props")
    run = backup(hostile, vm)
    assert run.ok, run
    target = run.result["target"]
    values = dict(line.split("\t")[1:3] for line in backup_node.zfs(
        "get", "-H", "-o", "name,property,value,source", "mountpoint,canmount,readonly,exec,setuid,devices",
        target).splitlines())
    assert values == {"mountpoint": "/%s" % target, "canmount": "noauto", "readonly": "on", "exec": "off",
                      "setuid": "off", "devices": "off"}, values
    backup_node.run(["zfs", "mount", "-a"])
    assert not [m for m in mounts(backup_node) if m.startswith(PWNED)]
    assert backup_node.run(["sh", "-c", "ls -A %s* 2>/dev/null | wc -l" % PWNED]).stdout.strip() == "0"


def test_a_file_system_sent_for_a_zvol_is_refused_and_leaves_nothing(hostile):
    compute, backup_node = hostile.node("compute"), hostile.node("backup")
    vm = new_vm(compute, 1, 64)
    make_hostile(compute, vm, "swap")
    before = backup_state(backup_node, vm)
    run = backup(hostile, vm)
    assert not run.ok, run
    said = " ".join(msg for _task, msg in run.failures)
    assert "compute node %s sent a filesystem where its disk is a volume" % compute.address in said, said
    assert backup_state(backup_node, vm) == before
    backup_node.run(["zfs", "mount", "-a"])
    assert not [m for m in mounts(backup_node) if m.startswith(PWNED)]


def test_a_replication_stream_is_refused_and_leaves_nothing(hostile):
    compute, backup_node = hostile.node("compute"), hostile.node("backup")
    vm = filesystem_vm(compute)
    make_hostile(compute, vm, "replicate")
    before = backup_state(backup_node, vm)
    run = backup(hostile, vm)
    assert not run.ok, run
    said = " ".join(msg for _task, msg in run.failures)
    assert "compute node %s sent a replication stream" % compute.address in said, said
    assert backup_state(backup_node, vm) == before


def test_a_hostile_answer_to_a_resume_never_mounts_or_runs(hostile):
    compute, backup_node = hostile.node("compute"), hostile.node("backup")
    vm = new_vm(compute, 16, 64)
    make_hostile(compute, vm, "resume")
    run = backup(hostile, vm)
    assert not run.ok, run
    said = " ".join(msg for _task, msg in run.failures)
    assert "transfer failed" in said, said
    target = "%s/backups/ds/%s-disk0" % (backup_node.pools[0], vm.uuid)
    # Both resume attempts of the run asked for the token's stream and got the hostile answer.
    asked = compute.run(["cat", "/var/log/vmbackup-hostile-resume.log"]).stdout.split()
    token = backup_node.zfs("get", "-H", "-o", "value", "receive_resume_token", target).strip()
    assert asked == [token, token], asked
    # The cut receive was resumable: its token is kept for a later run, nothing of the hostile answer is in it.
    assert token not in ("", "-")
    assert backup_node.zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r", target).split() == []
    mountpoints = backup_node.zfs("get", "-H", "-o", "value", "mountpoint", "-r", backup_node.pools[0]).split()
    assert not [m for m in mountpoints if m.startswith(PWNED)], mountpoints
    backup_node.run(["zfs", "mount", "-a"])
    assert not [m for m in mounts(backup_node) if m.startswith(PWNED)]
    assert backup_node.run(["sh", "-c", "ls -A %s* 2>/dev/null | wc -l" % PWNED]).stdout.strip() == "0"
