# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A small client of the QEMU guest agent protocol (JSON lines on a unix socket): sync, freeze, thaw."""

from __future__ import annotations

import json
import random
import socket


class GuestAgentError(Exception):
    """The guest agent did not answer, or answered with an error."""


class GuestAgent:
    """One connection to a guest agent socket; every call has a timeout so a hung guest cannot hang us."""

    def __init__(self, path: str, timeout: float = 10.0):
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def __enter__(self) -> "GuestAgent":
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(self.timeout)
            self._sock.connect(self.path)
        except OSError as err:
            raise GuestAgentError("cannot connect to the guest agent at %s: %s" % (self.path, err)) from err
        self.sync()
        return self

    def __exit__(self, *exc) -> None:
        if self._sock is not None:
            self._sock.close()

    def execute(self, command: str, arguments: dict | None = None):
        """Send one command and return its `return` value."""
        message = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
            reply = self._read()
        except (OSError, ValueError) as err:
            raise GuestAgentError("%s: %s" % (command, err)) from err
        if "error" in reply:
            raise GuestAgentError("%s: %s" % (command, reply["error"].get("desc", reply["error"])))
        return reply.get("return")

    def sync(self) -> None:
        """Discard stale replies left in the channel (guest-sync echoes our random id)."""
        token = random.randint(1, 2**31)
        self._sock.sendall(b"\xff" + json.dumps({"execute": "guest-sync", "arguments": {"id": token}}).encode() + b"\n")
        while True:
            try:
                reply = self._read()
            except (OSError, ValueError) as err:
                raise GuestAgentError("guest-sync: %s" % err) from err
            if reply.get("return") == token:
                return

    def freeze(self) -> int:
        return int(self.execute("guest-fsfreeze-freeze") or 0)

    def thaw(self) -> int:
        return int(self.execute("guest-fsfreeze-thaw") or 0)

    def _read(self) -> dict:
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise OSError("the guest agent closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        line = line.lstrip(b"\xff").strip()
        return json.loads(line) if line else self._read()
