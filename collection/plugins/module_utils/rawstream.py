# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The digest of a raw `zfs send -w` stream that is the same wherever the snapshot is sent from.

An encrypted disk's backup node has no key: it cannot read the disk's data, so a drill cannot hash the content as
it does for other disks. What it can hash is the raw stream, the encrypted blocks exactly as they are on disk, which
are the same bytes on the compute node and on a backup node that received them raw. The stream itself is not: its
BEGIN record names the snapshot it was sent from (`pool/dataset@snap`), and every record carries a running
fletcher-4 checksum of the stream so far, so one differing name changes every record after it.

`digest()` reads the stream record by record (the layout of `dmu_replay_record_t` in OpenZFS's zfs_ioctl.h: a
312-byte header, its last 32 bytes the running checksum, then a payload whose length the header gives) and hashes
each header with the name and the checksums zeroed, and each payload as it is. Two streams of the same snapshot
from two pools give the same sha256; a flipped bit in any block, a block more or less, or another snapshot give
another. Payloads are hashed in chunks; nothing is kept.

Run as a pipeline stage (`zfs send -w ... | <python> -c ... <root>`, see `stage()`), it prints the hex digest.
"""

from __future__ import annotations

import hashlib
import struct
import sys

HEADER = 312
CHECKSUM = slice(HEADER - 32, HEADER)  # the running checksum ending every record but BEGIN
BEGIN, OBJECT, FREEOBJECTS, WRITE, FREE, END, WRITE_BYREF, SPILL, WRITE_EMBEDDED, OBJECT_RANGE, REDACT = range(11)
MAGIC = 0x2F5BACBAC
TONAME = slice(8 + 48, 8 + 48 + 256)   # drr_begin.drr_toname
END_CHECKSUM = slice(8, 8 + 32)        # drr_end.drr_checksum, the whole stream's
CHUNK = 1 << 20


class StreamError(Exception):
    """The bytes are not a complete `zfs send` stream."""


def _round8(n: int) -> int:
    return (n + 7) & ~7


def payload_length(kind: int, header: bytes, order: str) -> int:
    """The bytes that follow a record's header (OpenZFS's DRR_*_PAYLOAD_SIZE and the BEGIN nvlist)."""
    body = header[8:]
    if kind == BEGIN:
        return struct.unpack_from(order + "I", header, 4)[0]
    if kind == OBJECT:
        bonuslen, = struct.unpack_from(order + "I", body, 20)
        raw_bonuslen, = struct.unpack_from(order + "I", body, 28)
        return raw_bonuslen if raw_bonuslen else _round8(bonuslen)
    if kind == WRITE:
        logical, = struct.unpack_from(order + "Q", body, 24)
        compression = body[42]
        compressed, = struct.unpack_from(order + "Q", body, 88)
        return compressed if compression else logical
    if kind == SPILL:
        length, compressed = struct.unpack_from(order + "Q", body, 8)[0], struct.unpack_from(order + "Q", body, 32)[0]
        return compressed or length
    if kind == WRITE_EMBEDDED:
        return _round8(struct.unpack_from(order + "I", body, 44)[0])
    if kind in (FREEOBJECTS, FREE, END, WRITE_BYREF, OBJECT_RANGE, REDACT):
        return 0
    raise StreamError("unknown record type %d" % kind)


def _read(handle, size: int) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise StreamError("the stream ends inside a record (%d of %d bytes)" % (len(data), size))
    return data


def digest(handle) -> str:
    """sha256 of the stream read from `handle` (binary), with the names and running checksums zeroed; raises
    StreamError when it is not one whole stream (it must end with its END record)."""
    sha = hashlib.sha256()
    order = None
    while True:
        header = handle.read(HEADER)
        if not header and order is not None:
            raise StreamError("the stream ends without its END record")
        if len(header) != HEADER:
            raise StreamError("the stream ends inside a record header")
        if order is None:
            for candidate in ("<", ">"):
                if struct.unpack_from(candidate + "Q", header, 8)[0] == MAGIC:
                    order = candidate
            if order is None:
                raise StreamError("not a zfs send stream (no BEGIN record)")
        kind, = struct.unpack_from(order + "I", header, 0)
        normal = bytearray(header)
        if kind == BEGIN:
            normal[TONAME] = bytes(256)
        else:
            normal[CHECKSUM] = bytes(32)
        if kind == END:
            normal[END_CHECKSUM] = bytes(32)
        sha.update(normal)
        left = payload_length(kind, header, order)
        while left:
            chunk = _read(handle, min(left, CHUNK))
            sha.update(chunk)
            left -= len(chunk)
        if kind == END:
            return sha.hexdigest()


# The command a pipeline runs as its last stage: this file's digest() over its stdin, printing the hex digest. The
# code is this constant; the one argument is where the collection's packages are (a folder, or AnsiballZ's zip).
STAGE_CODE = ("import sys; sys.path.insert(0, sys.argv[1]); "
              "from ansible_collections.vmbackup.zfs.plugins.module_utils import rawstream; rawstream.main()")


def stage() -> list[str]:
    """The pipeline stage that prints the raw digest of the stream it reads."""
    root = __file__.rsplit("/", 6)[0]  # <root>/ansible_collections/vmbackup/zfs/plugins/module_utils/rawstream.py
    return [sys.executable, "-c", STAGE_CODE, root]


def main() -> None:
    try:
        sys.stdout.write(digest(sys.stdin.buffer) + "\n")
    except StreamError as err:
        sys.stderr.write("raw stream digest: %s\n" % err)
        raise SystemExit(1) from err
