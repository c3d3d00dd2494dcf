"""Run commands joined by pipes and time them: the benchmarks' raw pipelines, here and on OpenZFS lab guests.

Imported by bench/transfer to run its raw pipelines on this machine. On the OpenZFS lab, bench/ozbench.py sends
this file's text to a guest (`python3 -c <this file> <JSON>`): there it runs the stages, timed by the guest's
own clock as the send module's Pipeline is, and prints {"seconds": ..., "failed": [...]}. Only the standard
library, for the guests' python3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable


def run_stages(stages: list[list[str]], output: str | None = None,
               start: Callable[..., subprocess.Popen] = subprocess.Popen,
               wait: Callable[[subprocess.Popen], int] = subprocess.Popen.wait,
               started_all: Callable[[list[subprocess.Popen]], None] | None = None) -> tuple[float, list[str]]:
    """Run `stages` joined by pipes (the last one writing to `output`, or nowhere): the wall seconds from the
    first start to the last exit, and a line per failed stage. `start(argv, **popen_args)` starts a stage,
    `wait` reaps it."""
    handle = open(output, "wb") if output else None
    errors = [tempfile.TemporaryFile() for _ in stages]  # files, not pipes: a chatty stage can never block
    procs: list[subprocess.Popen] = []
    try:
        started = time.monotonic()
        upstream = None
        for i, argv in enumerate(stages):
            last = i == len(stages) - 1
            stdout: Any = (handle or subprocess.DEVNULL) if last else subprocess.PIPE
            proc = start(argv, stdin=upstream if upstream is not None else subprocess.DEVNULL, stdout=stdout,
                         stderr=errors[i])
            if upstream is not None:
                upstream.close()
            upstream = proc.stdout
            procs.append(proc)
        if started_all:
            started_all(procs)
        codes = [wait(p) for p in procs]
        seconds = time.monotonic() - started
        failed = []
        for argv, code, err in zip(stages, codes, errors, strict=True):
            if code:
                err.seek(0)
                failed.append("%s: rc=%d %s" % (argv[0], code, err.read().decode("utf-8", "replace").strip()))
    finally:
        if handle:
            handle.close()
        for err in errors:
            err.close()
    return seconds, failed


def guest_main(spec: str) -> None:
    """In a guest: run the stages of `spec` ({"stages": [...], "output": path or null}), each in a session of
    its own; if stdin ends (the controller's ssh went away: Ctrl-C there), stop them all."""
    request = json.loads(spec)

    def start(argv: list[str], **kwargs: Any) -> subprocess.Popen:
        return subprocess.Popen(argv, start_new_session=True, env=dict(os.environ, LC_ALL="C"), **kwargs)

    def watch(procs: list[subprocess.Popen]) -> None:
        def stop_on_eof() -> None:
            sys.stdin.buffer.read()
            for proc in procs:
                if proc.poll() is None:
                    try:
                        os.killpg(proc.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
        threading.Thread(target=stop_on_eof, daemon=True).start()

    seconds, failed = run_stages(request["stages"], request.get("output"), start=start, started_all=watch)
    print(json.dumps({"seconds": seconds, "failed": failed}))


if __name__ == "__main__":
    guest_main(sys.argv[1])
