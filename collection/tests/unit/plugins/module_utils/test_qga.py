# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A hostile guest agent cannot hold a backup: one deadline for the whole exchange, replies capped and objects
only, and the thaw always attempted. Each agent here is a real unix socket served by a thread that behaves as a
guest with root could make its agent behave (the real agent's good path: tests/test_guest_agent.py)."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time

import pytest

from ansible_collections.vmbackup.zfs.plugins.module_utils.qga import MAX_LINE, GuestAgent, GuestAgentError


class Agent:
    """A unix socket server; `behave(conn, line)` answers each request line of each connection."""

    def __init__(self, behave):
        self.behave = behave
        self.folder = tempfile.mkdtemp(prefix="qga-")
        self.path = os.path.join(self.folder, "qga.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(4)
        self.requests: list[str] = []
        self.stop = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn = self.server.accept()[0]
            except OSError:
                return
            threading.Thread(target=self.talk, args=(conn,), daemon=True).start()

    def talk(self, conn) -> None:
        buffer = b""
        with conn:
            while not self.stop.is_set():
                try:
                    chunk = conn.recv(4096)
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    request = json.loads(line.lstrip(b"\xff"))
                    self.requests.append(request["execute"])
                    try:
                        self.behave(conn, request)
                    except OSError:
                        return

    def close(self) -> None:
        self.stop.set()
        self.server.close()


def honest(conn, request) -> None:
    answers = {"guest-sync": request.get("arguments", {}).get("id"), "guest-fsfreeze-freeze": 2,
               "guest-fsfreeze-thaw": 2}
    conn.sendall(json.dumps({"return": answers[request["execute"]]}).encode() + b"\n")


@pytest.fixture
def agent(request):
    made = Agent(request.param)
    yield made
    made.close()


def chatty(conn, request) -> None:
    """Answers every request with other replies, without end: never the sync's token."""
    while True:
        conn.sendall(b'{"return": 1}\n')
        time.sleep(0.01)


@pytest.mark.parametrize("agent", [chatty], indirect=True)
def test_an_agent_that_never_echoes_the_token_is_left_at_the_deadline(agent):
    started = time.monotonic()
    with pytest.raises(GuestAgentError, match="no answer within 1 s"):
        GuestAgent(agent.path, timeout=1).__enter__()
    assert time.monotonic() - started < 2.5


def trickle(conn, request) -> None:
    """A byte every 0.2 s: each read succeeds, the reply never ends."""
    for byte in b'{"return": ' * 100:
        conn.sendall(bytes([byte]))
        time.sleep(0.2)


@pytest.mark.parametrize("agent", [trickle], indirect=True)
def test_a_reply_trickled_a_byte_at_a_time_ends_at_the_deadline(agent):
    started = time.monotonic()
    with pytest.raises(GuestAgentError):
        GuestAgent(agent.path, timeout=1).__enter__()
    assert time.monotonic() - started < 2.5


def not_an_object(conn, request) -> None:
    conn.sendall(b"[1, 2, 3]\n")


def endless_line(conn, request) -> None:
    conn.sendall(b"x" * (MAX_LINE + 8192))


@pytest.mark.parametrize("agent, said", [(not_an_object, "not a JSON object"),
                                         (endless_line, "longer than %d bytes" % MAX_LINE)],
                         indirect=["agent"])
def test_replies_that_are_not_objects_or_have_no_end_are_refused(agent, said):
    with pytest.raises(GuestAgentError, match=said):
        GuestAgent(agent.path, timeout=5).__enter__()


def freeze_never_answers(conn, request) -> None:
    if request["execute"] != "guest-fsfreeze-freeze":
        honest(conn, request)


@pytest.mark.parametrize("agent", [freeze_never_answers], indirect=True)
def test_a_freeze_that_never_answers_is_still_thawed_on_a_new_connection(agent):
    guest = GuestAgent(agent.path, timeout=1).__enter__()
    with pytest.raises(GuestAgentError, match="guest-fsfreeze-freeze: no answer"):
        guest.freeze()
    assert guest.thaw() == 2  # past the deadline: thaw has its own grace
    assert agent.requests == ["guest-sync", "guest-fsfreeze-freeze", "guest-sync", "guest-fsfreeze-thaw"]


def wrong_count(conn, request) -> None:
    if request["execute"] == "guest-fsfreeze-freeze":
        conn.sendall(b'{"return": "all of them"}\n')
    else:
        honest(conn, request)


@pytest.mark.parametrize("agent", [wrong_count], indirect=True)
def test_a_freeze_count_that_is_not_a_number_is_refused(agent):
    guest = GuestAgent(agent.path, timeout=5).__enter__()
    with pytest.raises(GuestAgentError, match="number of file systems"):
        guest.freeze()


@pytest.mark.parametrize("agent", [honest], indirect=True)
def test_an_honest_agent_freezes_and_thaws(agent):
    with GuestAgent(agent.path, timeout=5) as guest:
        assert guest.freeze() == 2 and guest.thaw() == 2
    assert agent.requests == ["guest-sync", "guest-fsfreeze-freeze", "guest-fsfreeze-thaw"]
