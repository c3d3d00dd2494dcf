"""Where the runs take their CPU from: below the API, whatever the kernel's session groups do.

nice(1) alone is not enough everywhere. With autogroup scheduling (`kernel.sched_autogroup_enabled`) each
session is a group of its own, weighed against the others whatever its processes' niceness; every run is
a session (it must outlive a restart of the service) and ansible-runner starts one more for
ansible-playbook. Measured on the lab machine: a busy loop beside six nice-10 runs, each in a session of
its own, got 29% of a CPU. Autogroups apply only to processes in the root CPU cgroup, so there the runs go
into a CPU cgroup of their own, weighed as one process of their niceness (`cpu.shares` 110 for nice 10);
the same loop then got 100%. A service in a cgroup of its own (a systemd unit) has no autogroups, and
nice suffices.
"""

from __future__ import annotations

import os
from typing import NamedTuple


def group_name(nice: int) -> str:
    """One group per niceness, shared by every service on the machine that runs at it: its weight is the
    same whoever writes it (services at other nicenesses have groups of their own)."""
    return "vmbackup-runs-nice%d" % nice


# Prefix for a run's argv: the shell joins the group, then becomes the run (exec keeps the pid), so that
# everything the run starts is in the group from its first instruction. The procs file is an argument,
# never part of the script.
JOIN = ["/bin/sh", "-c", '{ echo $$ >"$0"; } 2>/dev/null; exec "$@"']


def weight(nice: int) -> int:
    """CFS's weight of a niceness (1024 at 0, each step about 1.25 times less), as cpu.shares takes it."""
    return max(2, round(1024 / 1.25 ** nice))


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def _cpu_mount() -> str | None:
    """The mount point of the cgroup v1 hierarchy that has the cpu controller."""
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        if " - cgroup " in line and "cpu" in fields[-1].split(","):
            return fields[4]
    return None


class Placement(NamedTuple):
    procs: str | None  # the `cgroup.procs` file every run joins (None: none needed, or none to be had)
    reason: str        # for the service's log
    below: bool        # whether the runs are weighed below the service (False: a warning)


def for_runs(nice: int) -> Placement:
    """Where the runs go so that their niceness holds against the service."""
    if nice <= 0:
        return Placement(None, "runs share the service's priority (--job-nice 0)", True)
    if _read("/proc/sys/kernel/sched_autogroup_enabled").strip() != "1":
        return Placement(None, "runs work at nice %d (no autogroups on this kernel)" % nice, True)
    memberships = [line.split(":", 2) for line in _read("/proc/self/cgroup").splitlines() if line.count(":") >= 2]
    cpu_path = next((path for _id, controllers, path in memberships if "cpu" in controllers.split(",")), None)
    unified = next((path for hierarchy, controllers, path in memberships
                    if hierarchy == "0" and not controllers), None)
    if (cpu_path or unified or "/") != "/":
        return Placement(None, "runs work at nice %d (the service is in CPU cgroup %s: no autogroups)"
                         % (nice, cpu_path or unified), True)
    mount = _cpu_mount() if cpu_path is not None else None
    if mount is None:
        return Placement(None, "runs work at nice %d, but each is a session of its own with autogroups on, "
                         "weighed like the service: run the service in a cgroup of its own (a systemd unit)"
                         % nice, False)
    group = os.path.join(mount, group_name(nice))
    try:
        os.makedirs(group, exist_ok=True)
        with open(os.path.join(group, "cpu.shares"), "w") as handle:
            handle.write(str(weight(nice)))
    except OSError as err:
        return Placement(None, "runs work at nice %d, but each is a session of its own with autogroups on: %s "
                         "could not be made (%s); run the service in a cgroup of its own (a systemd unit)"
                         % (nice, group, err), False)
    return Placement(os.path.join(group, "cgroup.procs"),
                     "runs work in CPU cgroup %s (cpu.shares %d, as nice %d)" % (group, weight(nice), nice), True)
