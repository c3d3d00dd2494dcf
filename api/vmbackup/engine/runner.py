"""The runner: each job is an `ansible-runner run` of one playbook, in its own private data directory,
with ident = the task id. Runs are detached processes, so a restart of the service finds them again
(still running, or finished) from their artifacts.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vmbackup.domain import paths
from vmbackup.engine import cpugroup, unsafe

logger = logging.getLogger("vmbackup")


@dataclass
class RunResult:
    """What a finished run says: its status, the playbook's `vmbackup_result`, and why it failed."""

    status: str                      # successful, failed, canceled, timeout, lost
    rc: int | None = None
    result: dict = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "successful"


class Runner:
    """Starts playbook runs and calls back when each ends."""

    def __init__(self, runs_dir: str, inventory: str, poll: float = 0.5, nice: int = 10,
                 cpu_group: str | None = None, place_runs: bool = False):
        self.runs_dir = runs_dir
        self.inventory = os.path.abspath(inventory)
        self.poll = poll
        # Runs work at this niceness (nice(1) execs ansible-runner, so the pid stays the run's): a night's
        # batch on a busy controller must not slow the API's answers (CFS gives nice 10 a tenth of nice 0),
        # and, where autogroups would weigh each run's session like the service, in a CPU cgroup
        # (`cpugroup.for_runs`: the `cgroup.procs` file that every run joins before it starts).
        self.nice = nice
        self.cpu_group = cpu_group
        self._place_runs = place_runs  # find (or make) the CPU group when the first run starts, not before
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        os.makedirs(runs_dir, exist_ok=True)

    def data_dir(self, ident: str) -> str:
        return os.path.join(self.runs_dir, ident)

    def progress_file(self, ident: str, item: int | None = None) -> str:
        """Where the send module writes bytes sent so far: one file per run, or per item of a batch."""
        name = "progress.json" if item is None else "progress-%d.json" % item
        return os.path.join(self.data_dir(ident), name)

    def progress(self, ident: str) -> dict:
        """The current step (task name) of a run and, during transfers, bytes sent and expected (summed over
        the disks of a batch)."""
        step = None
        for event in self.events(ident):
            if event.get("event") in ("playbook_on_task_start", "runner_on_start"):
                step = event.get("event_data", {}).get("task") or step
        progress: dict = {"step": step}
        for path in sorted(glob.glob(os.path.join(self.data_dir(ident), "progress*.json"))):
            try:
                with open(path) as handle:
                    part = json.load(handle)
            except (OSError, ValueError):
                continue
            for key in ("bytes", "total"):
                if isinstance(part.get(key), int):
                    progress[key] = progress.get(key, 0) + part[key]
            if part.get("updated"):
                progress["updated"] = max(progress.get("updated", ""), str(part["updated"]))
        return progress

    def artifacts(self, ident: str) -> str:
        return os.path.join(self.data_dir(ident), "artifacts", ident)

    def start(self, ident: str, playbook: str, extravars: dict, on_done: Callable[[RunResult], None]) -> dict:
        """Start `playbooks/<playbook>` with `extravars` (every string marked unsafe); return {"pid": the run's}."""
        data_dir = self.data_dir(ident)
        os.makedirs(os.path.join(data_dir, "env"), mode=0o700, exist_ok=True)
        _write_private(os.path.join(data_dir, "env", "extravars"), unsafe.dump(extravars))
        bin_dir = os.path.dirname(sys.executable)
        envvars = {"ANSIBLE_COLLECTIONS_PATH": paths.COLLECTIONS_PATH,
                   "ANSIBLE_CONFIG": os.path.join(paths.PROJECT, "ansible.cfg"),
                   "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
                   "ANSIBLE_NOCOLOR": "1"}
        _write_private(os.path.join(data_dir, "env", "envvars"), json.dumps(envvars))
        argv = [os.path.join(bin_dir, "ansible-runner"), "run", data_dir,
                "--ident", ident, "-p", os.path.join(paths.PLAYBOOKS, playbook),
                "--inventory", self.inventory, "--rotate-artifacts", "0"]
        if self.nice:
            argv = [shutil.which("nice") or "/usr/bin/nice", "-n", str(self.nice)] + argv
        if self._place_runs:
            self._place_runs = False
            placement = cpugroup.for_runs(self.nice)
            (logger.info if placement.below else logger.warning)("%s", placement.reason)
            self.cpu_group = placement.procs
        if self.cpu_group:
            argv = cpugroup.JOIN + [self.cpu_group] + argv
        log = os.open(os.path.join(data_dir, "runner.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        # A session of its own: the run outlives a restart of the service and is stopped as a group.
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=data_dir, env=job_environment(envvars),
                                    umask=0o077)  # what a run writes (artifacts, events) is private too
        finally:
            os.close(log)
        # Who the run is: its pid and the kernel's start time of that pid, so that a pid reused by another
        # process after a restart is never taken for the job (nor signalled).
        identity = {"pid": proc.pid, "start": _start_time(proc.pid), "boot": _boot_id()}
        _write_private(os.path.join(data_dir, "pid"), json.dumps(identity))
        with self._lock:
            self._procs[ident] = proc
        threading.Thread(target=self._watch, args=(ident, on_done), daemon=True, name="run-" + ident).start()
        return {"pid": proc.pid}

    def started(self, ident: str) -> bool:
        """Whether a run was started for `ident` (its pid file exists)."""
        return os.path.exists(os.path.join(self.data_dir(ident), "pid"))

    def reattach(self, ident: str, on_done: Callable[[RunResult], None]) -> None:
        """Follow a run started by an earlier service process (it may have ended meanwhile)."""
        threading.Thread(target=self._watch, args=(ident, on_done), daemon=True, name="run-" + ident).start()

    def running(self, ident: str) -> bool:
        with self._lock:
            proc = self._procs.get(ident)
        if proc is not None:
            return proc.poll() is None
        return self._live_pid(ident) is not None

    def cancel(self, ident: str) -> bool:
        """Stop a run (its whole process group); False if it is not running."""
        with self._lock:
            proc = self._procs.get(ident)
        pid = proc.pid if proc is not None and proc.poll() is None else self._live_pid(ident)
        if pid is None:
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        return True

    def _live_pid(self, ident: str) -> int | None:
        """The pid of the run `ident` if that very process is still alive, else None.

        A pid alone is not an identity: after a restart the number may belong to another process. The
        pid file records the kernel's start time of the process (and the boot), which must still match.
        """
        try:
            with open(os.path.join(self.data_dir(ident), "pid")) as handle:
                text = handle.read().strip()
        except OSError:
            return None
        try:
            identity = json.loads(text)
            pid = int(identity["pid"])
        except (ValueError, TypeError, KeyError):
            return None
        if not pid_alive(pid):
            return None
        same = identity.get("start") == _start_time(pid) and identity.get("boot") in (None, _boot_id())
        return pid if same else None

    def _watch(self, ident: str, on_done: Callable[[RunResult], None]) -> None:
        with self._lock:
            proc = self._procs.get(ident)
        if proc is not None:
            proc.wait()
        else:
            while self.running(ident):
                time.sleep(self.poll)
        with self._lock:
            self._procs.pop(ident, None)
        on_done(self.result(ident))

    def result(self, ident: str) -> RunResult:
        """Read a finished run's outcome from its artifacts."""
        folder = self.artifacts(ident)
        status = _read(os.path.join(folder, "status")) or "lost"
        rc_text = _read(os.path.join(folder, "rc"))
        rc = int(rc_text) if rc_text and rc_text.lstrip("-").isdigit() else None
        events = self.events(ident)
        result = {}
        for event in events:
            if event.get("event") == "playbook_on_stats":
                result = (event.get("event_data", {}).get("artifact_data") or {}).get("vmbackup_result") or {}
        errors = failures(events)
        if status == "lost" and not events:
            errors.append("the run left no artifacts (interrupted before it started)")
        elif status == "lost":
            errors.append("the run was interrupted (the service stopped while it ran)")
            status = "failed"
        return RunResult(status, rc, result, "; ".join(str(e) for e in errors))

    def events(self, ident: str) -> list[dict]:
        events = []
        for path in glob.glob(os.path.join(self.artifacts(ident), "job_events", "*.json")):
            try:
                with open(path) as handle:
                    events.append(json.load(handle))
            except (OSError, ValueError):
                continue  # an event being written
        return sorted(events, key=lambda e: e.get("counter", 0))

    def remove(self, ident: str) -> None:
        shutil.rmtree(self.data_dir(ident), ignore_errors=True)

    def purge(self, older_than: float, keep: Callable[[str], bool]) -> list[str]:
        """Remove the folders of runs last written more than `older_than` seconds ago, unless `keep(ident)`
        (a job still pending) or still running; return the idents removed. Task records stay in the store."""
        return purge_runs(self.runs_dir, older_than, lambda ident: keep(ident) or self.running(ident))


def failures(events: list[dict]) -> list[str]:
    """`task: message` of each failed or unreachable task of a run's events (ignored failures left out); the
    events of ansible-runner and of AWX's job_events have the same event and event_data fields."""
    found = []
    for event in events:
        data = event.get("event_data") or {}
        if event.get("event") in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            res = data.get("res") or {}
            found.append("%s: %s" % (data.get("task") or event.get("task") or data.get("task_action"),
                                     res.get("msg") or res))
    return found


def purge_runs(runs_dir: str, older_than: float, keep: Callable[[str], bool]) -> list[str]:
    """Remove the run folders below `runs_dir` last written more than `older_than` seconds ago, unless
    `keep(ident)`; return the idents removed."""
    removed = []
    cutoff = time.time() - older_than
    for entry in os.scandir(runs_dir):
        if entry.is_dir(follow_symlinks=False) and entry.stat().st_mtime <= cutoff and not keep(entry.name):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return removed


# What a job's process may see of the service's environment: what Ansible and ssh need, nothing else
# (the service's other variables, tokens or passwords among them, would land in every run's artifacts).
KEPT_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME",
                    "SSH_AUTH_SOCK")


def job_environment(envvars: dict) -> dict:
    """The environment of a run: the kept variables, the service's ANSIBLE_* settings, then `envvars`."""
    env = {k: os.environ[k] for k in KEPT_ENVIRONMENT if k in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith("ANSIBLE_")})
    env.setdefault("HOME", os.path.expanduser("~"))
    env.setdefault("LANG", "C.UTF-8")
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env.update(envvars)
    return env


def _write_private(path: str, text: str) -> None:
    """Write a file only its owner may read (extra vars name nodes and pools; logs hold task output)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return None


def pid_alive(pid: int | None) -> bool:
    """Whether process `pid` exists and is not a zombie (one that cannot be signalled still counts)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None
