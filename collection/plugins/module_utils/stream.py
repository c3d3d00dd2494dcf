# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The stages of a backup stream (meter, compressor, tee, checksum) and its run with a progress file."""

from __future__ import annotations

import json
import os
import shutil

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout
from ansible_collections.vmbackup.zfs.plugins.module_utils.job import JobFailed, utc_now
from ansible_collections.vmbackup.zfs.plugins.module_utils.manifest import PART_MARK
from ansible_collections.vmbackup.zfs.plugins.module_utils.pipeline import PipelineError


def meter_stage(bwlimit: int | None, count: bool = True) -> list[str] | None:
    """`pv` counts the bytes (and limits the rate); without pv, mbuffer limits and nothing counts.

    With `count=False` and no `bwlimit` there is no stage at all: pv costs a few percent of throughput.
    """
    if not bwlimit and not count:
        return None
    if shutil.which("pv"):
        argv = ["pv", "-n", "-b", "-i", "1"]
        if bwlimit:
            argv += ["-L", str(int(bwlimit))]
        return argv
    if bwlimit and shutil.which("mbuffer"):
        return ["mbuffer", "-q", "-m", "16M", "-r", str(int(bwlimit))]
    if bwlimit:
        raise RuntimeError("bwlimit needs pv or mbuffer on the backup node; install one of them")
    return None


def tee_stage(path: str) -> list[str]:
    """Write the stream to `path` and pass it on. mbuffer writes in large blocks (tee's 8 KiB writes
    are one FUSE round trip each on zfs-fuse, several times slower)."""
    if shutil.which("mbuffer"):
        return ["mbuffer", "-q", "-s", "128k", "-m", "16M", "-o", path, "-o", "-"]
    return ["tee", path]


def checksum_stage() -> list[str]:
    """sha256 of stdin, printed as `<hex> ...`; openssl's is faster than coreutils' where there is no SHA-NI."""
    if shutil.which("openssl"):
        return ["openssl", "dgst", "-sha256", "-r"]
    return ["sha256sum"]


def compress_stage(compression: str) -> list[str] | None:
    entry = layout.COMPRESSION[compression]
    if entry.get("parallel") and shutil.which(entry["parallel"][0]):
        return list(entry["parallel"])
    return list(entry["compress"]) if entry["compress"] else None


def decompress_stage(compression: str) -> list[str] | None:
    entry = layout.COMPRESSION[compression]
    return list(entry["decompress"]) if entry["decompress"] else None


def metered_bytes(stage) -> int | None:
    """The last count the meter stage (pv) printed: its total at the end."""
    if stage is None or stage.argv[0] != "pv":
        return None
    numbers = [w for w in stage.stderr.split() if w.isdigit()]
    return int(numbers[-1]) if numbers else None


def run_stream(pipeline, progress_file: str | None, total: int | None, failure: type = JobFailed,
               capture: bool = False):
    """Run a stream pipeline, keeping `progress_file` (bytes counted by its meter stage) up to date;
    a failed stage raises `failure`, raised from the PipelineError that holds every stage's report.

    The file is the controller's (the API's run folder): it is written only where its folder exists, on a
    backup node that is the controller or shares its file system. A backup node reached by ssh has no such
    folder; there the run goes on without progress rather than fail on it."""
    report = None
    if progress_file and not os.path.isdir(os.path.dirname(progress_file) or "."):
        progress_file = None
    if progress_file and pipeline.stage("meter") is not None:
        def report(line: str) -> None:
            if line.isdigit():
                write_progress(progress_file, int(line), total)
        write_progress(progress_file, 0, total)
    try:
        return pipeline.run(capture=capture, on_progress=report, progress_stage="meter")
    except PipelineError as err:
        raise failure("transfer failed: %s" % err) from err


def write_progress(path: str, sent: int, total: int | None) -> None:
    """Replace the progress file: bytes sent so far and the expected total (or null)."""
    tmp = "%s%s%d" % (path, PART_MARK, os.getpid())
    with open(tmp, "w") as handle:
        json.dump({"bytes": sent, "total": total, "updated": utc_now()}, handle)
    os.replace(tmp, path)
