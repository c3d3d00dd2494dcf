"""The playbooks against nodes reached only by ssh, on both ZFS implementations: zfs-fuse (netlab, filesystems as
VM disks) and OpenZFS 2.3 in QEMU guests (the OpenZFS lab, zvols as VM disks, as sites run them). Each test runs
once per implementation (the `nodes` fixture); data is compared by checksums of each disk (a zvol's whole
device on OpenZFS) before the backup and after the restore.

What OpenZFS changes on this path: `zfs send -nP` estimates, `zfs list -p`, `zfs set a=1 b=2`, volumes (`volsize`,
`/dev/zvol/...`, the drill's `dd`, the restore's swap of two volumes).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid

import pytest
from api_env import ADMIN, ApiEnv
from node_env import LabVM, backup_state, cut_midway, new_vm, playbook, remember, said, snapshots, wait_for_bytes
from node_env import Run as Background
from playbook_env import Run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces, QEMU taps and zfs-fuse need root")

DATA_MB, SIZE_MB = 8, 64
COMPRESSIONS = ["none", "gzip", "bzip2", "xz", "zstd", "lz4"]


def run(nodes, playbook: str, *options: str, **extra) -> Run:
    extra.setdefault("node", nodes.node("backup").name)
    return Run(playbook, extra, nodes.inventory, *options)


def ok(nodes, playbook: str, *options: str, **extra) -> Run:
    done = run(nodes, playbook, *options, **extra)
    assert done.ok, str(done)  # a str: pytest shortens the repr of an object
    return done


def target(nodes, vm, n: int = 0) -> str:
    return "%s/backups/ds/%s-disk%d" % (nodes.node("backup").pools[0], vm.uuid, n)


def implementation(node) -> str:
    out = node.run(["zfs", "version"], check=False)
    return "openzfs" if out.returncode == 0 and out.stdout.startswith("zfs-2") else "zfs-fuse"


def manifest(node, vm, name: str, n: int = 0) -> dict:
    """A dataset backup's manifest, read on the backup node."""
    root = node.zfs("get", "-H", "-o", "value", "mountpoint", "%s/backups/manifests" % node.pools[0]).strip()
    return json.loads(node.run(["cat", "%s/ds/%s-disk%d/%s.json" % (root, vm.uuid, n, name)]).stdout)


def disk_type(node, name: str) -> str:
    return node.zfs("get", "-H", "-o", "value", "type", name).strip()


def test_full_incremental_and_restores_give_back_each_backups_data(nodes):
    compute, backup = nodes.node("compute"), nodes.node("backup")
    vm = new_vm(compute, DATA_MB, SIZE_MB)
    disk = vm.disk(compute.pools[0], 0)
    at_first = compute.checksums(disk)
    first = ok(nodes, "backup.yml", hostname=vm.hostname, bkpdef="daily", bkpname="daily-20261205_010000")
    assert first.result["incremental"] is False and first.result["size"] > DATA_MB * 2**20 // 2, first
    # What each node is: the VM disk and its backup are volumes on OpenZFS, filesystems on zfs-fuse.
    kind = "volume" if implementation(compute) == "openzfs" else "filesystem"
    assert disk_type(compute, disk) == kind and disk_type(backup, target(nodes, vm)) == kind
    assert nodes.node("compute").name == first.result["compute_node"]

    compute.write_data(disk, "second", 2)
    at_second = compute.checksums(disk)
    assert at_second != at_first
    second = ok(nodes, "backup.yml", hostname=vm.hostname, bkpdef="daily", bkpname="daily-20261205_020000")
    assert second.result["incremental"] is True and second.result["base"] == "daily-20261205_010000", second
    assert second.result["size"] < first.result["size"]
    assert snapshots(backup, target(nodes, vm)) == ["daily-20261205_010000", "daily-20261205_020000"]
    # Blocks go as they are on disk (-c) and whole (-L) where both ends take it; the manifest says how.
    wire = ["-c", "-L"] if implementation(compute) == "openzfs" else []
    assert manifest(backup, vm, "daily-20261205_010000")["send_flags"] == wire
    assert manifest(backup, vm, "daily-20261205_020000")["send_flags"] == wire + ["-i"]

    compute.write_data(disk, "after-the-backups", 1)
    ok(nodes, "restore.yml", hostname=vm.hostname, bkpname="daily-20261205_020000",
       target_hostname=vm.hostname, target_disk_id=1)
    assert compute.checksums(disk) == at_second
    ok(nodes, "restore.yml", hostname=vm.hostname, bkpname="daily-20261205_010000",
       target_hostname=vm.hostname, target_disk_id=1, force=True)
    assert compute.checksums(disk) == at_first
    assert disk_type(compute, disk) == kind
    assert not [n for n in compute.zfs("list", "-H", "-o", "name", "-t", "all").split()
                if vm.uuid in n and n != disk], "a restore left a copy beside the disk"


def holds(node, snapshot: str) -> list[str]:
    """The tags of the user holds on a snapshot: `zfs holds -H` where it lists them (OpenZFS); on zfs-fuse,
    whose `zfs holds` cannot run (it wants pyzfs), only their count (`userrefs`) can be known: '?' each."""
    if implementation(node) == "zfs-fuse":
        return ["?"] * int(node.zfs("get", "-H", "-o", "value", "userrefs", snapshot).strip())
    return sorted(line.split("\t")[1] for line in node.zfs("holds", "-H", snapshot).splitlines() if "\t" in line)


def test_the_base_of_the_next_incremental_is_held_on_both_sides(nodes):
    """On OpenZFS the snapshot each next incremental starts from is held (tag vmbackup) on the compute node and
    on the backup node: anyone's `zfs destroy` of it fails, the hold moves with each backup, and vmbackup's own
    destroys (the source's older snapshots, a restore's old disk) release it first, never with -f. Each sent
    snapshot is bookmarked: a base destroyed anyway still starts the next incremental. zfs-fuse's nodes are not
    given holds or bookmarks (its Features say none) and keep working as before."""
    from ansible_run import run_module
    compute, backup = nodes.node("compute"), nodes.node("backup")
    vm = new_vm(compute, 2, SIZE_MB)
    disk = vm.disk(compute.pools[0], 0)
    first, second = "hourly-20261205_010000", "hourly-20261205_020000"
    ok(nodes, "backup.yml", hostname=vm.hostname, bkpdef="hourly", bkpname=first)
    src, dst = "%s@%s" % (disk, first), "%s@%s" % (target(nodes, vm), first)
    if implementation(compute) == "zfs-fuse":
        assert holds(compute, src) == [] and holds(backup, dst) == []
        return
    assert holds(compute, src) == ["vmbackup"] and holds(backup, dst) == ["vmbackup"]
    for node, snap in ((compute, src), (backup, dst)):  # another tool's retention, an operator's clean-up
        refused = node.run(["zfs", "destroy", snap], check=False)
        assert refused.returncode != 0 and "being held" in refused.stderr, refused.stderr
        assert node.exists(snap)

    compute.write_data(disk, "second", 1)
    made = ok(nodes, "backup.yml", hostname=vm.hostname, bkpdef="hourly", bkpname=second)
    assert made.result["incremental"] is True and made.result["base"] == first, made
    assert not compute.exists(src)  # the older base, released and pruned from the source
    assert holds(compute, "%s@%s" % (disk, second)) == ["vmbackup"]
    assert holds(backup, dst) == [] and holds(backup, "%s@%s" % (target(nodes, vm), second)) == ["vmbackup"]
    listed = run_module("vmbackup.zfs.backup_info", {"zpool": backup.pools[0]}, inventory=nodes.inventory,
                        host=backup.name)
    assert {b["name"]: b["holds"] for b in listed["backups"] if b["vm_uuid"] == vm.uuid} == {first: 0, second: 1}

    # An operator releases the hold and destroys the base anyway: its bookmark carries the chain on.
    compute.zfs("release", "vmbackup", "%s@%s" % (disk, second))
    compute.zfs("destroy", "%s@%s" % (disk, second))
    compute.write_data(disk, "third", 1)
    at_third = compute.checksums(disk)
    third = "hourly-20261205_030000"
    made = ok(nodes, "backup.yml", hostname=vm.hostname, bkpdef="hourly", bkpname=third)
    assert made.result["incremental"] is True and made.result["base"] == second, made
    assert manifest(backup, vm, third)["base_bookmark"] is True
    assert compute.zfs("list", "-H", "-o", "name", "-t", "bookmark", disk).split() == ["%s#%s" % (disk, third)]

    # A restore destroys the old disk with its snapshots: it releases the hold it owns.
    compute.write_data(disk, "after", 1)
    ok(nodes, "restore.yml", hostname=vm.hostname, bkpname=third, target_hostname=vm.hostname, target_disk_id=1,
       force=True)
    assert compute.checksums(disk) == at_third
    assert snapshots(compute, disk) == []
    assert not [n for n in compute.zfs("list", "-H", "-o", "name", "-r", compute.pools[0]).split() if "-restore-" in n]


def test_compressed_blocks_go_compressed(ozlab):
    """On OpenZFS the stream carries blocks as they are compressed on disk (-c): on compressible data an
    incremental backup's stream (counted by the module's meter) is a fraction of the data written, a whole
    plain stream of the snapshot is not, and the restored disk is the same. (zfs-fuse has no -c: its flags, in
    the first test.)"""
    nodes = ozlab
    compute = nodes.node("compute")
    vm = new_vm(compute, 1, SIZE_MB)
    disk = vm.disk(compute.pools[0], 0)
    compute.zfs("set", "compression=lz4", disk)
    ok(nodes, "backup.yml", hostname=vm.hostname, bkpdef="lz", bkpname="lz-20261205_010000")
    text = "\n".join("%06d vmbackup compressible log line, the same words again and again" % n for n in range(1000))
    compute.run(["sh", "-c", 'for i in $(seq 200); do printf "%s" "$1"; done | dd of="$2" bs=1M seek=16 '
                 'conv=fsync,notrunc iflag=fullblock status=none', "sh", text, compute.device(disk)])
    at_second = compute.checksums(disk)
    made = ok(nodes, "backup.yml", hostname=vm.hostname, bkpdef="lz", bkpname="lz-20261205_020000")
    assert manifest(nodes.node("backup"), vm, "lz-20261205_020000")["send_flags"] == ["-c", "-L", "-i"]
    written = 200 * len(text)
    assert made.result["size"] < written / 3, (made.result["size"], written)
    # The same snapshot, whole, plain and compressed: what -c saves.
    sizes = [int(compute.run(["sh", "-c", 'zfs send $1 "$2" | wc -c', "sh", flags, disk + "@lz-20261205_020000"])
                 .stdout) for flags in ("", "-c")]
    assert sizes[0] > written and sizes[1] < sizes[0] / 3, sizes
    print("-c: incremental %d bytes on the wire for %d written; whole snapshot %d plain, %d with -c"
          % (made.result["size"], written, sizes[0], sizes[1]))
    compute.write_data(disk, "after", 1)
    ok(nodes, "restore.yml", hostname=vm.hostname, bkpname="lz-20261205_020000", target_hostname=vm.hostname,
       target_disk_id=1)
    assert compute.checksums(disk) == at_second


def test_the_compute_node_keeps_only_a_bookmark_between_backups(nodes):
    """keep_snapshot=false: on OpenZFS the snapshot just sent is destroyed once bookmarked, so the compute node
    holds no snapshot of the disk between backups, and each next backup is incremental from the bookmark; the
    backups restore. zfs-fuse has no bookmarks: the snapshot stays as the base, and the run says why."""
    compute, backup = nodes.node("compute"), nodes.node("backup")
    vm = new_vm(compute, 2, SIZE_MB)
    disk = vm.disk(compute.pools[0], 0)
    first = ok(nodes, "backup.yml", hostname=vm.hostname, bkpdef="lean", bkpname="lean-20261205_010000",
               keep_snapshot=False)
    if implementation(compute) == "zfs-fuse":
        assert snapshots(compute, disk) == ["lean-20261205_010000"], first
        return
    assert snapshots(compute, disk) == [] and first.result["pruned_source"] == [disk + "@lean-20261205_010000"]
    assert compute.zfs("list", "-H", "-o", "name", "-t", "bookmark", disk).split() == [disk + "#lean-20261205_010000"]
    compute.write_data(disk, "second", 1)
    at_second = compute.checksums(disk)
    second = ok(nodes, "backup.yml", hostname=vm.hostname, bkpdef="lean", bkpname="lean-20261205_020000",
                keep_snapshot=False)
    assert second.result["incremental"] is True and second.result["base"] == "lean-20261205_010000", second
    assert manifest(backup, vm, "lean-20261205_020000")["base_bookmark"] is True
    assert snapshots(compute, disk) == []
    assert snapshots(backup, target(nodes, vm)) == ["lean-20261205_010000", "lean-20261205_020000"]
    compute.write_data(disk, "after", 1)
    ok(nodes, "restore.yml", hostname=vm.hostname, bkpname="lean-20261205_020000", target_hostname=vm.hostname,
       target_disk_id=1)
    assert compute.checksums(disk) == at_second


def test_each_node_says_which_zfs_features_it_has(nodes):
    """vm_info and backup_info report what the node's own `zfs` says it takes (its usage), never guessed from
    its name: every feature vmbackup uses on OpenZFS 2.3, none on zfs-fuse 0.7. What each run exercised."""
    from ansible_run import dumps, run_module

    from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import Features
    compute, backup = nodes.node("compute"), nodes.node("backup")
    expected = list(Features.FLAGS) if implementation(compute) == "openzfs" else []
    listed = run_module("vmbackup.zfs.vm_info", {}, inventory=nodes.inventory, host=compute.name)
    held = run_module("vmbackup.zfs.backup_info", {"zpool": backup.pools[0]}, inventory=nodes.inventory,
                      host=backup.name)
    for res in (listed, held):
        assert not res.failed and res["zfs"]["features"] == expected, dumps(res)
        assert res["zfs"]["implementation"] == implementation(compute)
    print("%s: %s" % (listed["zfs"]["version"], ", ".join(expected) or "no optional features"))


def test_file_backups_in_each_compression_restore_and_drill(nodes):
    compute, backup = nodes.node("compute"), nodes.node("backup")
    vm = new_vm(compute, DATA_MB, SIZE_MB)
    disk = vm.disk(compute.pools[0], 0)
    before = compute.checksums(disk)
    # A dataset backup first: its drill against the source gives the digest of this very data.
    ok(nodes, "backup.yml", hostname=vm.hostname, bkpdef="ds", bkpname="ds-20261205_030000")
    drill = ok(nodes, "verify.yml", hostname=vm.hostname, bkpname="ds-20261205_030000")
    assert drill.result["outcome"] == "passed" and drill.result["source_digest"] == drill.result["digest"], drill
    digest = drill.result["digest"]

    names = {c: "f%s-20261205_040000" % c for c in COMPRESSIONS}
    batch = ok(nodes, "backup.yml", backups=[
        {"node": backup.name, "hostname": vm.hostname, "bkpdef": "f" + c, "bkpname": names[c], "type": 2,
         "compression": c} for c in COMPRESSIONS])
    made = batch.result["backups"]
    assert batch.result["ok"] is True and len(made) == len(COMPRESSIONS), batch
    paths = {}
    for c in COMPRESSIONS:
        record = made["%s:1:%s" % (vm.uuid, names[c])]
        paths[c] = record["file_path"]
        ext = {"none": "", "gzip": ".gz", "bzip2": ".bz2", "xz": ".xz", "zstd": ".zst", "lz4": ".lz4"}[c]
        assert paths[c].endswith("/%s/disk0/%s-full.zfs%s" % (vm.uuid, names[c], ext)), record
        assert backup.run(["sha256sum", paths[c]]).stdout.split()[0] == record["checksum"]
    assert set(backup_state(backup, vm)["files"]) >= set(paths.values())
    # Each file decompresses whole to the stream its manifest counted.
    for c in COMPRESSIONS:
        record = json.loads(backup.run(["cat", made["%s:1:%s" % (vm.uuid, names[c])]["manifest"]]).stdout)
        reader = 'cat "$2"' if c == "none" else '"$1" -d -c < "$2"'
        out = backup.run(["bash", "-c", "set -o pipefail; %s | wc -c" % reader, "sh", c, paths[c]]).stdout
        assert int(out) == record["stream_size"] > DATA_MB * 2**20, c

    for c in ("xz", "lz4"):
        compute.write_data(disk, "before-restore-" + c, 1)
        back = ok(nodes, "restore.yml", hostname=vm.hostname, bkpname=names[c], target_hostname=vm.hostname,
                  target_disk_id=1, force=True)
        assert back.result["checksum_verified"] is True, back
        assert compute.checksums(disk) == before, c
    zstd = ok(nodes, "verify.yml", hostname=vm.hostname, bkpname=names["zstd"], type=2, expected_digest=digest)
    assert zstd.result["outcome"] == "passed" and zstd.result["digest"] == digest, zstd


def test_restore_onto_another_vms_disk_and_a_size_mismatch_refused(nodes):
    compute = nodes.node("compute")
    source, other, bigger = (new_vm(compute, DATA_MB, SIZE_MB), new_vm(compute, 2, SIZE_MB),
                             new_vm(compute, 2, SIZE_MB * 2))
    disk = source.disk(compute.pools[0], 0)
    sums = compute.checksums(disk)
    ok(nodes, "backup.yml", hostname=source.hostname, bkpdef="mv", bkpname="mv-20261205_050000")

    other_disk = other.disk(compute.pools[0], 0)
    moved = ok(nodes, "restore.yml", hostname=source.hostname, bkpname="mv-20261205_050000",
               target_hostname=other.hostname, target_disk_id=1)
    assert moved.result["target"] == other_disk, moved
    assert list(compute.checksums(other_disk).values()) == list(sums.values())
    assert compute.checksums(disk) == sums  # the source VM's disk was only read

    bigger_disk = bigger.disk(compute.pools[0], 0)
    untouched = compute.checksums(bigger_disk)
    refused = run(nodes, "restore.yml", hostname=source.hostname, bkpname="mv-20261205_050000",
                  target_hostname=bigger.hostname, target_disk_id=1)
    assert not refused.ok and any("target_disk_id: disk 1 of %s has" % bigger.hostname in msg
                                  for _task, msg in refused.failures), refused
    assert compute.checksums(bigger_disk) == untouched


def test_prune_keeps_the_base_and_the_next_backup_is_incremental(nodes):
    compute, backup = nodes.node("compute"), nodes.node("backup")
    vm = new_vm(compute, 2, SIZE_MB)
    disk = vm.disk(compute.pools[0], 0)
    names = ["keep-20261205_0%d0000" % n for n in range(1, 4)]
    for name in names:
        compute.write_data(disk, name, 1)
        ok(nodes, "backup.yml", hostname=vm.hostname, bkpdef="keep", bkpname=name)
    pruned = ok(nodes, "prune.yml", hostname=vm.hostname, bkpdef="keep", retention=1)
    assert pruned.result["destroyed"] == names[:2], pruned
    assert snapshots(backup, target(nodes, vm)) == names[2:]
    assert snapshots(compute, disk) == names[2:]  # the base of the next incremental, on both sides
    after = ok(nodes, "backup.yml", hostname=vm.hostname, bkpdef="keep", bkpname="keep-20261205_040000")
    assert after.result["incremental"] is True and after.result["base"] == names[2], after


def test_a_batch_of_disks_on_two_compute_nodes(nodes):
    first, second = [n for n in nodes.node_list() if n.role == "compute"][:2]
    here, there = new_vm(first, 2, SIZE_MB, disks=2), new_vm(second, 2, SIZE_MB)
    sums = {d: first.checksums(here.disk(first.pools[0], d)) for d in (0, 1)}
    batch = ok(nodes, "backup.yml", backups=[
        {"hostname": here.hostname, "disk_id": 1, "bkpdef": "b", "bkpname": "b-20261205_060000"},
        {"hostname": here.hostname, "disk_id": 2, "bkpdef": "b", "bkpname": "b-20261205_060000"},
        {"hostname": there.hostname, "bkpdef": "b", "bkpname": "b-20261205_060000"}])
    made = batch.result["backups"]
    assert batch.result["ok"] is True and len(made) == 3, batch
    assert made["%s:1:b-20261205_060000" % there.uuid]["compute_node"] == second.name
    assert made["%s:2:b-20261205_060000" % here.uuid]["compute_node"] == first.name
    for vm, n in ((here, 0), (here, 1), (there, 0)):
        assert snapshots(nodes.node("backup"), target(nodes, vm, n)) == ["b-20261205_060000"]
    first.write_data(here.disk(first.pools[0], 1), "later", 1)
    ok(nodes, "restore.yml", hostname=here.hostname, bkpname="b-20261205_060000", disk_id=2,
       target_hostname=here.hostname, target_disk_id=2, force=True)
    assert first.checksums(here.disk(first.pools[0], 1)) == sums[1]


def test_check_and_diff_make_nothing_and_say_what_would_be_done(nodes):
    compute, backup = nodes.node("compute"), nodes.node("backup")
    vm = new_vm(compute, 2, SIZE_MB)
    disk = vm.disk(compute.pools[0], 0)
    planned = ok(nodes, "backup.yml", "--check", "--diff", hostname=vm.hostname, bkpdef="ck",
                 bkpname="ck-20261205_070000")
    assert planned.result["check"] is True and planned.result["incremental"] is False, planned
    assert "would send" in planned.messages[-1]
    assert snapshots(compute, disk) == [] and not backup.exists(target(nodes, vm))
    ok(nodes, "backup.yml", hostname=vm.hostname, bkpdef="ck", bkpname="ck-20261205_080000")
    sums = compute.checksums(disk)
    planned = ok(nodes, "restore.yml", "--check", "--diff", hostname=vm.hostname, bkpname="ck-20261205_080000",
                 target_hostname=vm.hostname, target_disk_id=1)
    assert planned.result.get("check") is True, planned
    assert compute.checksums(disk) == sums and snapshots(compute, disk) == ["ck-20261205_080000"]


def test_the_api_backs_up_restores_and_marks_a_destroyed_backup_lost(nodes):
    compute, backup = nodes.node("compute"), nodes.node("backup")
    vm = new_vm(compute, DATA_MB, SIZE_MB)
    disk = vm.disk(compute.pools[0], 0)
    data_dir = tempfile.mkdtemp(prefix="vmbackup-api-", dir="/var/tmp")
    env = ApiEnv(type("Pools", (), {"backup_pool": nodes.pool})(), data_dir, nodes.inventory,
                 serve_args=["--no-scheduler", "--discover-every", "3600"])
    env.add_user(*ADMIN, admin=True)
    env.start()
    try:
        client = env.client()
        deadline = time.monotonic() + 300
        while True:  # once the service's first discovery has found the VM
            defined = client.post("vm/%s/define/backup/api" % vm.hostname, node=backup.name, zpool=nodes.pool,
                                  schedule="0 4 * * *", retention=5)
            if defined.status != 404 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert defined.status == 201, defined.body
        sums = compute.checksums(disk)
        names = []
        for _ in range(2):
            started = client.post("vm/%s/backup/api" % vm.hostname)
            assert started.status == 201, started.body
            done = env.wait(client, started.task_id, timeout=600)
            assert done["code"] == 200, done
            names.append(done["result"]["detail"].split(",")[0].split("=")[1])
        compute.write_data(disk, "after", 2)
        started = client.put("vm/%s/backup/%s" % (vm.hostname, names[0]), target_hostname_or_uuid=vm.hostname,
                             target_disk_id=1, force=True)
        assert started.status == 201, started.body
        done = env.wait(client, started.task_id, timeout=600)
        assert done["code"] == 200, done
        assert compute.checksums(disk) == sums

        gone = "%s@%s" % (target(nodes, vm), names[1])  # the newest: on OpenZFS the held base of the next one
        if holds(backup, gone):
            backup.zfs("release", "vmbackup", gone)  # someone means it
        backup.zfs("destroy", gone)
        started = client.put("sync")
        assert started.status == 201, started.body
        assert env.wait(client, started.task_id, timeout=600)["code"] == 200
        listed = {b["name"]: b["status"] for b in client.get("vm/%s/backup" % vm.hostname, define="api",
                                                             full=True).result}
        assert listed == {names[0]: 1, names[1]: 4}, listed  # OK, LOST
    finally:
        env.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def new_encrypted_vm(node, data_mb: int, size_mb: int = SIZE_MB) -> tuple[LabVM, str]:
    """A VM whose disk is a zvol with native encryption, its own encryption root, its raw key in a file that only
    the compute node has."""
    vm = remember(node, LabVM(str(uuid.uuid4()), "e%s.lab" % uuid.uuid4().hex[:6], size_mb=size_mb))
    disk = vm.disk(node.pools[0], 0)
    key = "/root/vmbackup-test-%s.key" % vm.uuid
    node.run(["sh", "-c", 'head -c 32 /dev/urandom > "$1"', "sh", key])
    node.run(["zfs", "create", "-V", "%dM" % size_mb, "-o", "encryption=on", "-o", "keyformat=raw",
              "-o", "keylocation=file://" + key, "-o", "vmbackup:hostname=" + vm.hostname,
              "-o", "vmbackup:brand=" + vm.brand, "-o", "vmbackup:state=" + vm.state, disk])
    node.run(["udevadm", "settle"])
    node.write_data(disk, "data", data_mb, offset_mb=0)
    return vm, key


def test_an_encrypted_disk_is_backed_up_restored_and_drilled_without_its_key(ozlab):
    """An encrypted zvol (OpenZFS native encryption) goes raw (zfs send -w), full then incremental, into a dataset
    and into a file: the backup node never has its key (its copies say keystatus=unavailable, the key file is only
    on the compute node). The drills prove it without the key (guid, the raw stream's digest from the scratch copy
    against the source's, a wrong digest refused); a restore sends it back raw, loads the key on the compute node
    and gives back each backup's data. (zfs-fuse has no encryption.)"""
    nodes = ozlab
    compute, backup = nodes.node("compute"), nodes.node("backup")
    vm, key = new_encrypted_vm(compute, DATA_MB)
    disk = vm.disk(compute.pools[0], 0)
    at_first = compute.checksums(disk)
    first = ok(nodes, "backup.yml", hostname=vm.hostname, bkpdef="enc", bkpname="enc-20261205_010000")
    assert first.result["raw"] is True and first.result["incremental"] is False, first
    compute.write_data(disk, "second", 2)
    at_second = compute.checksums(disk)
    second = ok(nodes, "backup.yml", hostname=vm.hostname, bkpdef="enc", bkpname="enc-20261205_020000")
    assert second.result["raw"] is True and second.result["base"] == "enc-20261205_010000", second
    assert any("its key stays on" in m for m in second.messages), second.messages
    copy = target(nodes, vm)
    assert manifest(backup, vm, "enc-20261205_010000")["send_flags"] == ["-w"]
    assert manifest(backup, vm, "enc-20261205_020000")["send_flags"] == ["-w", "-i"]
    recorded = manifest(backup, vm, "enc-20261205_020000")["encryption"]
    assert recorded == {"cipher": "aes-256-gcm", "encryption_root": disk, "keyformat": "raw",
                        "keylocation": "file://" + key}, recorded
    for name in (copy, copy + "@enc-20261205_020000"):
        assert backup.zfs("get", "-H", "-o", "value", "keystatus", name).strip() == "unavailable", name
    assert backup.run(["test", "-e", key], check=False).returncode != 0, "the key is on the backup node"

    drill = ok(nodes, "verify.yml", hostname=vm.hostname, bkpname="enc-20261205_020000")
    assert drill.result["outcome"] == "passed" and drill.result["digest_kind"] == "raw-stream", drill
    assert drill.result["digest"] == drill.result["source_digest"], drill
    assert "without its key" in drill.result["reason"], drill
    wrong = run(nodes, "verify.yml", hostname=vm.hostname, bkpname="enc-20261205_010000",
                expected_digest="0" * 64)
    assert not wrong.ok and wrong.result["outcome"] == "failed", wrong
    assert "raw stream differs" in wrong.result["reason"], wrong.result["reason"]

    # A file backup of an encrypted disk is a raw stream too: its drill receives it without the key.
    made = ok(nodes, "backup.yml", hostname=vm.hostname, bkpdef="encf", bkpname="encf-20261205_030000", type=2,
              compression="zstd")
    assert made.result["raw"] is True, made
    # Its source snapshot went with the backup (a file is the base of nothing): the drill compares the scratch
    # copy's raw stream with the one the compute node sent, whose digest the manifest recorded.
    filed = ok(nodes, "verify.yml", hostname=vm.hostname, bkpname="encf-20261205_030000", type=2)
    assert filed.result["outcome"] == "passed" and filed.result["compared_with"] == ["backup"], filed
    record = json.loads(backup.run(["cat", made.result["manifest"]]).stdout)
    assert record["send_flags"] == ["-w"] and record["raw_digest"] == filed.result["digest"], record

    compute.write_data(disk, "after-the-backups", 1)
    back = ok(nodes, "restore.yml", hostname=vm.hostname, bkpname="enc-20261205_010000",
              target_hostname=vm.hostname, target_disk_id=1)
    assert compute.checksums(disk) == at_first
    values = compute.zfs("get", "-H", "-o", "value", "keystatus,encryptionroot,keylocation", disk).split()
    assert values == ["available", disk, "file://" + key], values
    ok(nodes, "restore.yml", hostname=vm.hostname, bkpname="encf-20261205_030000", type=2,
       target_hostname=vm.hostname, target_disk_id=1)
    assert compute.checksums(disk) == at_second, back
    assert not [n for n in compute.zfs("list", "-H", "-o", "name", "-t", "all").split()
                if vm.uuid in n and n != disk], "a restore left a copy beside the disk"


def test_a_cut_transfer_resumes_where_it_stopped(nodes, progress):
    """OpenZFS receives with -s: a stream cut at about half leaves a resume token, and the same run resumes it
    once the link is back (`zfs send -t`), sending about the other half, not the whole disk again; the
    manifest records the resumed part; the disk restores whole. (zfs-fuse has no resume: the next test.)"""
    compute, backup = nodes.node("compute"), nodes.node("backup")
    if implementation(compute) != "openzfs":
        pytest.skip("zfs-fuse has no zfs receive -s (its features: test_each_node_says_which_zfs_features_it_has)")
    mib = 48
    vm = new_vm(compute, mib, SIZE_MB)
    disk = vm.disk(compute.pools[0], 0)
    at_backup = compute.checksums(disk)
    job = Background(nodes, "backup.yml", progress, hostname=vm.hostname, bkpdef="resume", bwlimit=2_000_000)
    wait_for_bytes(job, progress, mib // 2 * 2**20, reader=backup)
    compute.link(False)
    try:
        time.sleep(20)  # longer than ssh's ServerAlive (3 x 5 s): the stream is cut
    finally:
        compute.link(True)
    rc, out = job.wait(600)
    assert rc == 0, out[-4000:]
    name = snapshots(backup, target(nodes, vm))[-1]
    record = manifest(backup, vm, name)
    assert len(record["resumed"]) == 1, record
    resumed, whole = record["resumed"][0]["bytes"], record["size"]
    assert whole > mib * 2**20 * 0.9 and 0.2 * whole < resumed < 0.75 * whole, record
    print("cut at half of %d MiB: %d of %d bytes sent again on resume" % (mib, resumed, whole))
    compute.write_data(disk, "after", 1)
    ok(nodes, "restore.yml", hostname=vm.hostname, bkpname=name, target_hostname=vm.hostname, target_disk_id=1)
    assert compute.checksums(disk) == at_backup


def test_link_cut_during_a_full_send(nodes, progress):
    """The compute node's link cut mid-send for the whole run (a zvol between two guests on OpenZFS). On
    zfs-fuse nothing is received, no manifest, and the next backup is a full one that takes the failed run's
    snapshot away. On OpenZFS the cut receive stays resumable (a dataset with a resume token and no snapshot,
    no manifest) with its source snapshot, and the next backup resumes it and goes on incrementally from it,
    leaving one snapshot on each side. Last in this file:
    no other test uses the guests while the link is down (the OpenZFS guests are shared by the test workers,
    and every test on them is in this file but the hostile-node ones, which never lose a link)."""
    compute, backup = nodes.node("compute"), nodes.node("backup")
    # More data than the TCP and pipe buffers between the nodes hold (about 10 MiB): the cut stops the stream.
    vm = new_vm(compute, 40, 128)
    disk = vm.disk(compute.pools[0], 0)
    before = backup_state(backup, vm)
    run = Background(nodes, "backup.yml", progress, hostname=vm.hostname, bkpdef="full", bwlimit=2_000_000)
    out = cut_midway(compute, run, progress, reader=backup)
    assert "transfer failed" in out, out[-4000:]
    left = snapshots(compute, disk)
    resumable = implementation(compute) == "openzfs"
    if resumable:
        state = backup_state(backup, vm)
        assert state["files"] == before["files"] and state["datasets"] == [target(nodes, vm)], state
        assert snapshots(backup, target(nodes, vm)) == [] and len(left) == 1, left
        assert backup.zfs("get", "-H", "-o", "value", "receive_resume_token", target(nodes, vm)).strip() != "-"
        assert "kept the resume token" in out, out[-4000:]
    else:
        assert backup_state(backup, vm) == before  # nothing received, no manifest
        # The compute node was unreachable while the run cleaned up: its snapshot stays, and the run says so.
        assert left == [] or "FAILED to destroy new source snapshot" in out, out[-4000:]

    out = playbook(nodes, "backup.yml", hostname=vm.hostname, bkpdef="full")
    newest = snapshots(compute, disk)
    if resumable:
        assert [t["snapshot"] for t in manifest(backup, vm, newest[-1])["resumed"]] == left, out[-3000:]
    else:
        assert "as a full backup" in said(out), out[-3000:]
    assert len(newest) == 1 and newest[0] not in left  # the failed run's snapshot went with the next backup
    assert snapshots(backup, target(nodes, vm)) == newest
