# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a module run is: its refusals, its interruption by a signal, and the one shape of its failure.

Every module fails with `msg`, `cmd`, `rc`, `stderr`, `stages` and `cleanup`: the command that
failed (a zfs command, or the stream pipeline as a shell line), its exit code and stderr, each stage's
report when the stream failed, and what was done to undo the run.
"""

from __future__ import annotations

import shlex
import signal

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout
from ansible_collections.vmbackup.zfs.plugins.module_utils.pipeline import PipelineError
from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import ZfsError


class JobFailed(Exception):
    """The module's job did not happen; `msg` says why, `extra` what the module reports with it."""

    def __init__(self, msg: str, **extra):
        super().__init__(msg)
        self.extra = extra


class Interrupted(Exception):
    """The module was asked to stop (SIGTERM/SIGINT/SIGHUP); cleanup runs, then it fails."""


def stop_on_signals() -> None:
    """Turn SIGTERM, SIGINT and SIGHUP into an exception so that cleanup code runs."""
    def handler(signum, frame):
        raise Interrupted("interrupted by signal %d" % signum)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, handler)


def ignore_signals() -> None:
    """From here on SIGTERM/SIGINT/SIGHUP wait: a cleanup or a commit must not stop halfway."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def utc_now() -> str:
    """Now as every time is written (layout.STAMP_RE: ISO 8601 UTC to the millisecond, with a Z)."""
    return layout.utc_stamp()


def _cause(err: BaseException | None) -> BaseException | None:
    """The command failure behind `err`: itself or one it was raised from."""
    while err is not None:
        if isinstance(err, (ZfsError, PipelineError)) or all(hasattr(err, k) for k in ("cmd", "rc", "stderr")):
            return err
        err = err.__cause__
    return None


def failure(err: BaseException | None) -> dict:
    """`cmd`, `rc`, `stderr` and `stages` of what failed, from the exception that says so."""
    fields = {"cmd": None, "rc": None, "stderr": None, "stages": []}
    cause = _cause(err)
    if isinstance(cause, ZfsError):
        fields.update(cmd=shlex.join(cause.cmd), rc=cause.rc, stderr=cause.stderr)
    elif isinstance(cause, PipelineError):
        fields.update(cmd=str(cause.pipeline), rc=cause.failed.returncode, stderr=cause.failed.stderr.strip(),
                      stages=cause.pipeline.report())
    elif cause is not None:
        fields.update(cmd=cause.cmd, rc=cause.rc, stderr=cause.stderr)
    return fields


def fail(module, msg: str, err: BaseException | None = None, cleanup: list | None = None, **result) -> None:
    """Fail the module in the one shape every vmbackup module fails in."""
    fields = dict(result)
    fields.update(failure(err))
    fields["cleanup"] = list(cleanup or [])
    module.fail_json(msg=msg, **fields)
