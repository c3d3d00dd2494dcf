# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A pipeline of argument lists: `zfs send | pv | gzip | tee file | sha256sum` without a shell.

Each stage is its own process; data flows from one to the next through OS pipes and never
through Python. Each stage keeps its exit code and stderr, and the pipeline prints itself as a
shell line an operator can paste.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
import time

# Exit codes that mean "my reader went away", which is the consequence of a failure, not its cause.
_SIGPIPE_CODES = {-signal.SIGPIPE, 128 + signal.SIGPIPE}


class Stage:
    """One command of a pipeline, with what it did once run."""

    def __init__(self, argv: list[str], label: str | None = None):
        self.argv = [str(a) for a in argv]
        self.label = label or os.path.basename(self.argv[0])
        self.returncode: int | None = None
        self.stderr = ""

    def __str__(self) -> str:
        return shlex.join(self.argv)

    def as_dict(self) -> dict:
        return {"stage": self.label, "cmd": str(self), "rc": self.returncode, "stderr": self.stderr.strip()}


class PipelineError(Exception):
    """A pipeline stage failed; `failed` is the stage that caused it."""

    def __init__(self, pipeline: "Pipeline", failed: Stage):
        self.pipeline = pipeline
        self.failed = failed
        super().__init__("%s failed (rc=%s): %s"
                         % (failed.label, failed.returncode, failed.stderr.strip() or "no message"))


class Pipeline:
    """Stages joined stdout to stdin; the last writes to a file, to a captured pipe, or nowhere."""

    def __init__(self, env: dict | None = None):
        self.stages: list[Stage] = []
        self.env = dict(os.environ if env is None else env, LC_ALL="C")
        self._procs: list[subprocess.Popen] = []
        self.stdout = b""
        self.seconds = 0.0

    def add(self, argv: list[str] | None, label: str | None = None) -> "Pipeline":
        """Append a stage; None is skipped, so optional stages read naturally."""
        if argv:
            self.stages.append(Stage(argv, label))
        return self

    def __str__(self) -> str:
        return " | ".join(str(s) for s in self.stages)

    def run(self, capture: bool = False, on_progress=None, progress_stage: str | None = None,
            poll: float = 1.0) -> "Pipeline":
        """Run all stages to their end; raise PipelineError naming the stage that failed.

        With `capture`, the last stage's stdout (small: a checksum) is kept in `self.stdout`.
        `on_progress(line)` gets each new stderr line of the stage labelled `progress_stage`.
        """
        started = time.monotonic()
        errfiles = []
        prev_stdout = None
        try:
            for i, stage in enumerate(self.stages):
                last = i == len(self.stages) - 1
                err = tempfile.TemporaryFile()
                errfiles.append(err)
                proc = subprocess.Popen(
                    stage.argv, stdin=prev_stdout if prev_stdout is not None else subprocess.DEVNULL,
                    stdout=(subprocess.PIPE if capture else subprocess.DEVNULL) if last else subprocess.PIPE,
                    stderr=err, env=self.env, close_fds=True)
                if prev_stdout is not None:
                    prev_stdout.close()  # only the next stage may hold the read end
                prev_stdout = proc.stdout if not last else None
                self._procs.append(proc)
            last_proc = self._procs[-1]
            watch = self._stage_index(progress_stage)
            # The captured output is small (a checksum): it fits the pipe, so it is read at the end.
            while True:
                running = [p for p in self._procs if p.poll() is None]
                if not running:
                    break
                if on_progress and watch is not None:
                    self._report(errfiles[watch], on_progress)
                try:  # wake as soon as a stage ends, not on the next tick of a sleep
                    running[0].wait(timeout=poll if on_progress else None)
                except subprocess.TimeoutExpired:
                    pass
            if capture:
                self.stdout = last_proc.stdout.read()
                last_proc.stdout.close()
            if on_progress and watch is not None:
                self._report(errfiles[watch], on_progress)
            for stage, proc, err in zip(self.stages, self._procs, errfiles):  # noqa: B905 (Python 3.8 on nodes)
                stage.returncode = proc.wait()
                err.seek(0)
                stage.stderr = err.read().decode("utf-8", "replace")
        finally:
            self.terminate()
            for err in errfiles:
                err.close()
            self.seconds = time.monotonic() - started
        failed = self.failed_stage()
        if failed is not None:
            raise PipelineError(self, failed)
        return self

    def stage(self, label: str) -> Stage | None:
        """The stage with this label, if the pipeline has one."""
        index = self._stage_index(label)
        return None if index is None else self.stages[index]

    def _stage_index(self, label: str | None) -> int | None:
        for i, stage in enumerate(self.stages):
            if stage.label == label:
                return i
        return None

    @staticmethod
    def _report(errfile, on_progress) -> None:
        errfile.seek(0)
        lines = errfile.read().decode("utf-8", "replace").split()
        if lines:
            on_progress(lines[-1])

    def failed_stage(self) -> Stage | None:
        """The stage that caused a failure: the first that failed for a reason other than SIGPIPE."""
        failed = [s for s in self.stages if s.returncode not in (0, None)]
        if not failed:
            return None
        causes = [s for s in failed if s.returncode not in _SIGPIPE_CODES]
        return (causes or failed)[0]

    def terminate(self) -> None:
        """Stop every stage still running (used on errors and on SIGTERM)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def report(self) -> list[dict]:
        """Each stage's command, exit code and stderr, for fail_json and logs."""
        return [s.as_dict() for s in self.stages]
