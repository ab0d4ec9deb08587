"""What the peer servers' apps share: the listening socket and the ready line.

peers.py (``peerlib.ProcessServer``) binds the loopback port itself and
starts each peer server's process(es) with the listening socket inherited,
its descriptor number in ``BENCH_LISTEN_FD``: the way Daphne's docs describe
running under a process manager (``--fd``), and how two worker processes
share one port. Each app prints ``peer ready <pid>`` once it serves.
"""

from __future__ import annotations

import os
import socket
import sys

ROOM = "bench"


def listener() -> socket.socket:
    """The inherited listening socket."""
    return socket.socket(fileno=int(os.environ["BENCH_LISTEN_FD"]))


def say_ready() -> None:
    print(f"peer ready {os.getpid()}", flush=True)
    sys.stdout.flush()


def joined() -> str:
    return f"joined {os.getpid()}"


def ready() -> str:
    return f"ready {os.getpid()}"


def done(message) -> str:
    """The publisher's answer once a broadcast went out (see broadcast.py)."""
    import time

    head = message[:8] if isinstance(message, str) else message[:8].decode("ascii", "replace")
    return f"done {head} {time.monotonic_ns()}"


def send_to_all(members: set, message, closed: type) -> None:
    """Send `message` to every connection in `members` (``.send``); drop those closed."""
    for member in list(members):
        try:
            member.send(message)
        except closed:
            members.discard(member)
