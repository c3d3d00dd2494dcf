# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A small client of the QEMU guest agent protocol (JSON lines on a unix socket): sync, freeze, thaw.

The guest is not trusted: whoever has root in it answers for its agent. So one deadline covers the whole
exchange (connect, sync, freeze, thaw), not each read: an agent that keeps answering other lines, or answers
a byte at a time, cannot hold a backup past it; a reply line is capped (MAX_LINE) and must be a JSON object.
"""

from __future__ import annotations

import json
import random
import socket
import time

MAX_LINE = 64 * 1024  # guest-sync, guest-fsfreeze-* replies are a few dozen bytes


class GuestAgentError(Exception):
    """The guest agent did not answer in time, or answered with an error or with something else than a reply."""


class GuestAgent:
    """One connection to a guest agent socket; every call ends by the deadline set at connect time (`timeout`
    seconds from then), so a hung or hostile guest cannot hang us. `thaw()` gets `thaw_grace` seconds more
    whatever is left of it: a frozen guest must be thawed."""

    def __init__(self, path: str, timeout: float = 10.0, thaw_grace: float = 5.0):
        self.path = path
        self.timeout = timeout
        self.thaw_grace = thaw_grace
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._deadline = 0.0

    def __enter__(self) -> "GuestAgent":
        self._deadline = time.monotonic() + self.timeout
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(self.timeout)
            self._sock.connect(self.path)
        except OSError as err:
            self.close()
            raise GuestAgentError("cannot connect to the guest agent at %s: %s" % (self.path, err)) from err
        try:
            self.sync()
        except GuestAgentError:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def execute(self, command: str, arguments: dict | None = None):
        """Send one command and return its `return` value."""
        message = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self._send(json.dumps(message).encode() + b"\n")
            reply = self._read()
        except (OSError, ValueError) as err:
            self.close()  # a late reply must not answer the next command: thaw() connects anew
            raise GuestAgentError("%s: %s" % (command, err)) from err
        if "error" in reply:
            error = reply["error"]
            raise GuestAgentError("%s: %s" % (command, error.get("desc", error) if isinstance(error, dict) else error))
        return reply.get("return")

    def sync(self) -> None:
        """Discard stale replies left in the channel (guest-sync echoes our random id), until the deadline."""
        token = random.randint(1, 2**31)
        try:
            self._send(b"\xff" + json.dumps({"execute": "guest-sync", "arguments": {"id": token}}).encode() + b"\n")
            while self._read().get("return") != token:
                pass
        except (OSError, ValueError) as err:
            raise GuestAgentError("guest-sync: %s" % err) from err

    def freeze(self) -> int:
        return self._count(self.execute("guest-fsfreeze-freeze"))

    def thaw(self) -> int:
        """Thaw, with `thaw_grace` seconds even if the deadline has passed (a connection that broke is made
        again for it)."""
        self._deadline = max(self._deadline, time.monotonic() + self.thaw_grace)
        if self._sock is None:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.settimeout(self.thaw_grace)
                self._sock.connect(self.path)
                self._buffer = b""
                self.sync()
            except OSError as err:
                raise GuestAgentError("guest-fsfreeze-thaw: cannot reconnect: %s" % err) from err
        return self._count(self.execute("guest-fsfreeze-thaw"))

    @staticmethod
    def _count(value) -> int:
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise GuestAgentError("the guest agent answered %r where a number of file systems was due" % (value,))
        return value

    def _left(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise OSError("no answer within %.0f s" % self.timeout)
        return left

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            raise OSError("not connected")
        self._sock.settimeout(self._left())
        self._sock.sendall(data)

    def _read(self) -> dict:
        """The next reply line, as a JSON object; blank lines and the sync's 0xff are skipped."""
        if self._sock is None:
            raise OSError("not connected")
        while True:
            while b"\n" not in self._buffer:
                if len(self._buffer) > MAX_LINE:
                    raise ValueError("a reply line longer than %d bytes" % MAX_LINE)
                self._sock.settimeout(self._left())
                try:
                    chunk = self._sock.recv(4096)
                except TimeoutError as err:
                    raise OSError("no answer within %.0f s" % self.timeout) from err
                if not chunk:
                    raise OSError("the guest agent closed the connection")
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\n", 1)
            if len(line) > MAX_LINE:
                raise ValueError("a reply line longer than %d bytes" % MAX_LINE)
            line = line.replace(b"\xff", b"").strip()
            if not line:
                continue
            reply = json.loads(line)
            if not isinstance(reply, dict):
                raise ValueError("a reply that is not a JSON object: %s" % line[:80].decode("utf-8", "replace"))
            return reply
