"""The OpenZFS lab of `bench/transfer --openzfs` and `bench/restore --openzfs`: two QEMU guests running OpenZFS 2.3
(labs/vmbackup_lab/ozlab.py), a compute guest whose VM disks are zvols and a backup guest that pulls from it over ssh.

The lab is the benchmarks' own (its folder, bridge, subnet and guests' names are not the tests' or the default
lab's). Raw pipelines run inside the guests and are timed there (bench/stages.py, sent as `python3 -c`), as the
modules time theirs; a guest reaches the other with the ssh command the modules build from the inventory's
vmbackup_ssh_* variables (module_utils/zfs.py SshTarget), so that both pay for the same ssh.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchrun import REPO, STOPPER, reap, run_play, spawn

if TYPE_CHECKING:
    from vmbackup_lab.ozlab import Guest, OpenZfsLab

LAB_DIRECTORY = "/var/tmp/vmbackup-ozlab-bench"
PREFIX = "vbozb"
SUBNET = "10.79.30"
NODES = [("ozb-compute", "compute"), ("ozb-backup", "backup")]
POOL = "zones"
STAGES = Path(__file__).resolve().parent / "stages.py"

# `--data text`: log-like lines (a timestamp, a host, a program, one of 32 messages, a status, a duration, a fixed
# client and agent), about 5x with lz4 in 16 KiB blocks (OpenZFS's default volblocksize), so that each block fits
# in one 4 KiB sector (ashift=12): 4x on the zvol. Run on a guest as
# `python3 -c TEXT_WRITER <device> <offset MiB> <MiB> <seed>`: the seed (the data's name) makes each write new.
TEXT_WRITER = """
import os, random, sys
device, offset_mb, mib, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = random.Random(seed)
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(400)]
messages = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 8))) for _ in range(32)]
hosts = ["web%02d" % n for n in range(8)]
apps = ["nginx[1021]", "sshd[812]", "cron[640]", "postgres[1533]", "app-worker[2210]", "kernel"]
statuses = (200, 200, 200, 304, 404, 500)
stamp = 1700000000000 + rng.randrange(10 ** 9)
rand, choice = rng.random, rng.choice
fd = os.open(device, os.O_WRONLY)
os.lseek(fd, offset_mb << 20, 0)
left, carry = mib << 20, b""
while left > 0:
    lines = []
    for _ in range(8192):
        stamp += int(rand() * 100)
        lines.append("%d.%03d %s %s: %s status=%d took=%dms client=10.20.0.17 agent=\\"Mozilla/5.0 (X11)\\"\\n" % (
            stamp // 1000, stamp % 1000, choice(hosts), choice(apps), choice(messages), choice(statuses),
            int(rand() * 40)))
    carry += "".join(lines).encode()
    while len(carry) >= min(left, 1 << 20) and left > 0:
        n = min(left, 1 << 20)
        os.write(fd, carry[:n])
        carry, left = carry[n:], left - n
os.fsync(fd)
os.close(fd)
"""

# Release every user hold on the snapshots under a dataset (the send module holds the base of the next incremental
# on both nodes; a held snapshot cannot be destroyed or rolled back over). `python3 -c RELEASE <dataset>` on a guest.
RELEASE = """
import subprocess, sys
def zfs(*args):
    return subprocess.run(["zfs", *args], check=True, capture_output=True, text=True).stdout
for line in zfs("list", "-H", "-o", "name,userrefs", "-t", "snapshot", "-r", sys.argv[1]).splitlines():
    name, refs = line.split("\\t")
    if refs.strip() not in ("0", "-"):
        for hold in zfs("holds", "-H", name).splitlines():
            zfs("release", hold.split("\\t")[1], name)
"""


def make_lab(pool_size: str = "3G") -> OpenZfsLab:
    from vmbackup_lab.ozlab import OpenZfsLab

    return OpenZfsLab(directory=LAB_DIRECTORY, prefix=PREFIX, subnet=SUBNET, nodes=list(NODES), pool_size=pool_size)


class OzNodes:
    """The lab's compute and backup guests, driven from here; commands, timed pipelines and playbook runs."""

    def __init__(self, lab: OpenZfsLab) -> None:
        import yaml

        from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import SshTarget

        self.lab = lab
        self.compute: Guest = lab.node("compute")
        self.backup: Guest = lab.node("backup")
        with open(lab.inventory) as handle:
            inventory = yaml.safe_load(handle)
        host = inventory["all"]["children"]["compute"]["hosts"][self.compute.name]
        # The backup guest reaches the compute guest as the modules do (the playbooks pass these as source_*).
        self.peer = SshTarget(host=host["vmbackup_ssh_host"], user=host["vmbackup_ssh_user"],
                              port=int(host["vmbackup_ssh_port"]), key=host["vmbackup_ssh_key"],
                              options=list(host["vmbackup_ssh_options"]))

    # -- commands ----------------------------------------------------------------------------------
    def on_compute(self, argv: list[str]) -> list[str]:
        """The argv that runs `argv` on the compute guest from the backup guest: the modules' own ssh command."""
        from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import Node

        return Node(self.peer).argv(argv)

    def on_compute_shell(self, argv: list[str]) -> str:
        """The same, as one shell word list for a shell on the backup guest (syncoid-style)."""
        from vmbackup_lab.ozlab import shell_quote

        return " ".join(shell_quote(word) for word in self.on_compute(argv))

    @staticmethod
    def run(guest: Guest, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        STOPPER.check()
        return guest.run(argv, check=check)

    def zfs(self, guest: Guest, *args: str) -> str:
        return self.run(guest, ["zfs", *args]).stdout

    def exists(self, guest: Guest, name: str) -> bool:
        return self.run(guest, ["zfs", "list", "-H", "-o", "name", name], check=False).returncode == 0

    def guid(self, guest: Guest, name: str) -> str:
        return self.zfs(guest, "get", "-H", "-o", "value", "guid", name).strip()

    def release_holds(self, guest: Guest, dataset: str) -> None:
        """Release the holds on every snapshot under `dataset` (the module's, on the bases it keeps)."""
        self.run(guest, ["python3", "-c", RELEASE, dataset])

    def destroy(self, guest: Guest, name: str) -> None:
        if self.exists(guest, name):
            self.release_holds(guest, name)
            self.zfs(guest, "destroy", "-r", name)

    def rollback_to(self, guest: Guest, target: str, snapshot: str) -> None:
        """Put a backup dataset back at `snapshot`, dropping what an earlier incremental receive added (and
        releasing the holds that would keep it)."""
        newest = self.zfs(guest, "list", "-H", "-o", "name", "-t", "snapshot", "-d", "1", target).split()
        if newest and newest[-1] != "%s@%s" % (target, snapshot):
            self.release_holds(guest, target)
            self.zfs(guest, "rollback", "-r", "%s@%s" % (target, snapshot))

    def reset(self) -> None:
        """A clean start on a lab an earlier run kept (--keep-lab) or left: every dataset in both pools goes."""
        for guest in (self.compute, self.backup):
            for name in self.zfs(guest, "list", "-H", "-o", "name", "-d", "1", POOL).split()[1:]:
                self.release_holds(guest, name)
                self.zfs(guest, "destroy", "-r", name)

    def stream_bytes(self, guest: Guest, snapshot: str, base: str | None = None, flags: tuple[str, ...] = ()) -> int:
        """Send the stream once into `wc -c` on its own guest (`zfs send [flags] [-i @base] snapshot`, the
        words as arguments of `sh -c`): its size, and a warm ARC for what follows."""
        send = ["zfs", "send", *flags, *(["-i", "@" + base] if base else []), snapshot]
        script = 'set -e; "$@" | wc -c'
        return int(self.run(guest, ["sh", "-c", script, "sh", *send]).stdout.split()[0])

    def write_text(self, guest: Guest, volume: str, name: str, mib: int, offset_mb: int | None = None) -> None:
        """`mib` MiB of compressible text (TEXT_WRITER, seeded by `name`) into the zvol, at `offset_mb` (default:
        a place that `name` picks, as the lab's write_data picks it for random data)."""
        size_mb = int(self.zfs(guest, "get", "-Hp", "-o", "value", "volsize", volume)) // 2**20
        if offset_mb is None:
            offset_mb = zlib.crc32(name.encode()) % max(1, size_mb - mib)
        self.run(guest, ["python3", "-c", TEXT_WRITER, "/dev/zvol/" + volume, str(offset_mb), str(mib), name])

    # -- timed pipelines ---------------------------------------------------------------------------
    def timed(self, guest: Guest, stages: list[list[str]], output: str | None = None) -> float:
        """Run `stages` joined by pipes on `guest`, timed there; the seconds. Our ssh to the guest keeps the
        pipeline's stdin open: if it is stopped (Ctrl-C here), the guest stops the pipeline."""
        STOPPER.check()
        spec = json.dumps({"stages": stages, "output": output})
        with tempfile.TemporaryFile() as errors:
            proc = spawn(guest.ssh_argv(["python3", "-c", STAGES.read_text(), spec]), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=errors)
            assert proc.stdout is not None and proc.stdin is not None
            out = proc.stdout.read()
            proc.stdin.close()
            code = reap(proc)
            errors.seek(0)
            said = errors.read().decode("utf-8", "replace").strip()
        try:
            report = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RuntimeError("%s: the timed pipeline did not report (rc=%d): %s %s"
                               % (guest.name, code, out.decode("utf-8", "replace")[-1000:], said[-2000:])) from None
        if report["failed"]:
            raise RuntimeError("%s: %s failed: %s" % (guest.name, " | ".join(" ".join(a) for a in stages),
                                                       "; ".join(report["failed"])))
        return float(report["seconds"])

    # -- playbooks -------------------------------------------------------------------------------
    def playbook(self, name: str, extravars: dict[str, Any], timeout: int = 3600) -> tuple[dict[str, Any], float]:
        """One playbooks/<name> run against the lab's inventory through ansible-runner: its vmbackup_result
        (set_stats) and the run's wall seconds."""
        done = run_play(str(REPO / "playbooks" / name), self.lab.inventory, extravars, timeout=timeout)
        result: dict[str, Any] = {}
        failures = []
        for event in done.events:
            data = event.get("event_data", {})
            if event.get("event") == "playbook_on_stats":
                result = (data.get("artifact_data") or {}).get("vmbackup_result") or {}
            elif event.get("event") == "runner_on_failed" and not data.get("ignore_errors"):
                failures.append("%s: %s" % (data.get("task", ""), data["res"].get("msg")))
        if done.status != "successful" or not result.get("ok", True):
            raise RuntimeError("%s %s: %s (%s)\n%s" % (name, json.dumps(extravars), done.status, "; ".join(failures),
                                                       done.output[-3000:] if not failures else ""))
        return result, done.wall

    def environment(self) -> dict[str, Any]:
        """What the guests run (ZFS, syncoid, the accelerator)."""
        def first_line(guest: Guest, argv: list[str]) -> str | None:
            proc = self.run(guest, argv, check=False)
            lines = (proc.stdout or proc.stderr).splitlines()
            return lines[0] if lines else None

        return {"zfs": first_line(self.compute, ["zfs", "version"]),
                "guest_kernel": first_line(self.compute, ["uname", "-r"]),
                "syncoid": first_line(self.backup, ["syncoid", "--version"]),
                "accelerator": self.lab.ran_with,
                "guests": {g.name: {"role": g.role, "address": g.address, "cpus": 2, "memory_mb": g.memory_mb}
                           for g in (self.compute, self.backup)}}
