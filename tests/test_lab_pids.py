"""The labs trust a pid file only while its pid runs the program that wrote it: a pid file outlives its process,
and once pids wrap (at 32768 on these machines) its number names another process. Trusting one killed an
OpenZFS guest in the middle of a CI run (a netlab node's stale zfs-fuse pid file)."""

from __future__ import annotations

import shutil
import subprocess

from vmbackup_lab.lab import read_pid, stop_pid


def test_a_pid_file_names_its_process_only_while_that_process_runs_the_program(tmp_path):
    pidfile = tmp_path / "sleep.pid"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pidfile.write_text("%d\n" % sleeper.pid)
        assert read_pid(str(pidfile), "sleep") == sleeper.pid
        # The same number, another program: a reused pid. Stopping "it" leaves the process alone.
        assert read_pid(str(pidfile), "zfs-fuse") is None
        assert stop_pid(read_pid(str(pidfile), "zfs-fuse"), wait=0) and sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
    assert read_pid(str(pidfile), "sleep") is None  # gone
    for text in ("", "0\n", "-1\n", "x\n"):
        pidfile.write_text(text)
        assert read_pid(str(pidfile), "sleep") is None, text
    assert read_pid(str(tmp_path / "missing.pid"), "sleep") is None


def test_a_program_name_longer_than_the_kernel_keeps_is_compared_as_cut(tmp_path):
    """QEMU's process is `qemu-system-x86` in /proc (15 characters), its program `qemu-system-x86_64`."""
    program = tmp_path / "qemu-system-x86_64"
    program.symlink_to(shutil.which("sleep"))
    proc = subprocess.Popen([str(program), "60"])
    try:
        (tmp_path / "qemu.pid").write_text("%d\n" % proc.pid)
        assert read_pid(str(tmp_path / "qemu.pid"), "qemu-system-x86_64") == proc.pid
        assert read_pid(str(tmp_path / "qemu.pid"), "qemu-system-aarch64") is None
    finally:
        proc.kill()
        proc.wait()
