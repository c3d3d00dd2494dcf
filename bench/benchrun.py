"""What bench/transfer and bench/restore share to run things: the project's venv, signals that stop a run cleanly,
processes in sessions of their own, timed pipelines, and ansible-runner runs that a signal can cancel."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages import run_stages

if TYPE_CHECKING:
    from types import FrameType

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
RESULTS = REPO / "bench" / "results"


# -- running under the project's venv --------------------------------------------------------------
def reexec_under_venv(prog: str, script: str) -> None:
    """Re-run `script` with .venv/bin/python when ansible_runner is not importable here."""
    try:
        import ansible_runner  # noqa: F401
    except ImportError:
        python = VENV / "bin" / "python"
        if os.environ.get("VMBACKUP_BENCH_REEXEC") or not python.exists():
            sys.exit("%s: ansible_runner is not importable and %s is missing; run ./scripts/bootstrap"
                     % (prog, python))
        os.environ["VMBACKUP_BENCH_REEXEC"] = "1"
        os.execv(str(python), [str(python), str(Path(script).resolve()), *sys.argv[1:]])
    # ansible-runner looks ansible-playbook up on PATH: the venv's, as `make` and an activated venv do.
    os.environ["PATH"] = "%s%s%s" % (Path(sys.executable).parent, os.pathsep, os.environ.get("PATH", ""))
    for path in (REPO / "tests", REPO / "api", REPO / "labs", REPO):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


# -- stopping cleanly ------------------------------------------------------------------------------
class Interrupted(Exception):
    """Ctrl-C (SIGINT), SIGTERM or SIGHUP: stop measuring, clean up, exit 130."""


class Stopper:
    """Signals become Interrupted, except inside an ansible-runner run, which is cancelled instead."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.in_runner = False
        self.cleaning = False

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.cleaning:
            print("\nbench: cleaning up, please wait", file=sys.stderr, flush=True)
            return
        first = not self.requested.is_set()
        self.requested.set()
        if self.in_runner and first:
            return  # the runner polls cancel() and stops the play; Interrupted is raised after it returns
        raise Interrupted("stopped by signal %d" % signum)

    def check(self) -> None:
        if self.requested.is_set() and not self.cleaning:
            raise Interrupted("stopped by a signal")


STOPPER = Stopper()
CHILDREN: list[subprocess.Popen] = []


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen:
    """Start a process in a session of its own (Ctrl-C reaches only us; we stop it) and keep track of it."""
    proc = subprocess.Popen(argv, start_new_session=True, env=dict(os.environ, LC_ALL="C"), **kwargs)
    CHILDREN.append(proc)
    return proc


def reap(proc: subprocess.Popen) -> int:
    code = proc.wait()
    if proc in CHILDREN:
        CHILDREN.remove(proc)
    return code


def stop_group(pgid: int, timeout: float = 20.0) -> None:
    """SIGTERM a process group (so that the send module can undo a half-made backup), SIGKILL what remains."""
    if pgid == os.getpgrp():
        return
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and group_alive(pgid):
            time.sleep(0.2)
        if not group_alive(pgid):
            return


def group_alive(pgid: int) -> bool:
    """Whether a process group has a member that is not a zombie."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def stop_children() -> None:
    """Stop what we started: our pipelines, and the ansible-playbook of a cancelled runner."""
    for proc in list(CHILDREN):
        if proc.poll() is None:
            stop_group(proc.pid)
        reap(proc)
    for pid in direct_children():
        try:
            stop_group(os.getpgid(pid))
        except ProcessLookupError:
            pass


def direct_children() -> list[int]:
    me = str(os.getpid())
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            pids.append(int(entry))
    return pids


# -- commands and pipelines -------------------------------------------------------------------------
def run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    STOPPER.check()
    proc = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, LC_ALL="C"))
    if check and proc.returncode != 0:
        raise RuntimeError("%s failed (rc=%d): %s" % (" ".join(argv), proc.returncode, proc.stderr.strip()))
    return proc


def run_pipeline(stages: list[list[str]], output: str | None = None) -> float:
    """Run `stages` joined by pipes (last one writing to `output` or nowhere); return the wall seconds."""
    STOPPER.check()
    seconds, failed = run_stages(stages, output, start=spawn, wait=reap)
    if failed:
        raise RuntimeError("%s failed: %s" % (" | ".join(" ".join(a) for a in stages), "; ".join(failed)))
    return seconds


# -- ansible-runner ---------------------------------------------------------------------------------
@dataclasses.dataclass
class PlayRun:
    """What an ansible-runner run left: its events, its output, its status, and its wall seconds."""

    events: list[dict[str, Any]]
    output: str
    status: str
    wall: float


def run_play(playbook: Any, inventory: str, extravars: dict[str, Any] | None = None,
             timeout: int = 1800) -> PlayRun:
    """ansible_runner.run of a play (a list) or a playbook (a path), cancelled by a signal: the play's
    ansible-playbook is stopped (SIGTERM to its group first, so that a module can undo its work)."""
    import ansible_runner
    from ansible_run import ENV

    def cancel() -> bool:
        if not STOPPER.requested.is_set():
            return False
        for pid in direct_children():  # ansible-playbook, in a session of its own (pexpect's pty)
            try:
                stop_group(os.getpgid(pid))
            except ProcessLookupError:
                pass
        return True

    STOPPER.check()
    with tempfile.TemporaryDirectory(prefix="vmbackup-bench-") as data_dir:
        STOPPER.in_runner = True
        started = time.monotonic()
        try:
            runner = ansible_runner.run(private_data_dir=data_dir, playbook=playbook, inventory=inventory,
                                        extravars=extravars or {}, envvars=ENV, quiet=True, timeout=timeout,
                                        cancel_callback=cancel, settings={"pexpect_timeout": 1})
        finally:
            STOPPER.in_runner = False
        wall = time.monotonic() - started
        STOPPER.check()
        return PlayRun(list(runner.events), runner.stdout.read() if runner.stdout else "", str(runner.status), wall)
