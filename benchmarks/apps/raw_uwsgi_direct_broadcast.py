"""Baseline broadcast (fan-out) server: uWSGI's API, the publisher writing straight to sockets.

The fastest fan-out an app on uWSGI's own API can do without a layer on
top: the publisher's greenlet frames each message once and writes the same
bytes to every subscriber's socket with ``os.write`` on uWSGI's fd. Only a
short write (the kernel's send buffer full) queues the rest, per
subscriber, for a small greenlet that waits until the socket is writable
(``gevent.socket.wait_write``) and writes it, so a slow subscriber never
holds up the others and each one's bytes stay in order. Each subscriber's
request greenlet sits in ``uwsgi.websocket_recv()`` (it answers pings and
sees the close).

Nothing here is safe to ship: uWSGI's own pong could land inside a frame
left half-written in a subscriber's queue (the benchmark's client sends no
pings), and nothing bounds a queue. It is the floor for CPU per delivery.

Paths (any other path is a subscriber):

* ``/sub`` - subscriber: sends ``"joined <worker pid>"`` once registered.
* ``/pub`` - publisher: sends ``"ready <worker pid>"``, then each received
  message goes to every subscriber.

Run under uWSGI with gevent, from the repository root::

    uwsgi --master --need-app --die-on-term --gevent 2000 \\
        --http-socket 127.0.0.1:8000 --module benchmarks.apps.raw_uwsgi_direct_broadcast:app
"""

import os
import struct

import gevent
import uwsgi
from gevent.socket import wait_write

#: fd -> the bytes a short write left over (a key only while some wait).
PENDING = {}
#: The fds of the subscribers connected to this worker.
SUBSCRIBERS = set()


def frame(payload):
    """An unmasked text frame (no fragmentation): what a server sends."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + struct.pack("!H", n) + payload
    return b"\x81\x7f" + struct.pack("!Q", n) + payload


def app(env, start_response):
    key = env.get("HTTP_SEC_WEBSOCKET_KEY")
    if not key:
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"WebSocket upgrade required\n"]
    uwsgi.websocket_handshake(key, env.get("HTTP_ORIGIN", ""))
    if env.get("PATH_INFO") == "/pub":
        publish()
    else:
        subscribe()
    return []


def flush(fd):
    """Write what waits for ``fd`` as the socket takes it (one greenlet per backlog)."""
    try:
        while PENDING.get(fd):
            wait_write(fd)
            data = PENDING.get(fd)
            if not data:
                break
            try:
                sent = os.write(fd, data)
            except BlockingIOError:
                continue
            del data[:sent]
    except OSError:
        pass
    PENDING.pop(fd, None)


def write(fd, data):
    pending = PENDING.get(fd)
    if pending is not None:  # bytes wait already: after them, in order
        pending += data
        return
    try:
        sent = os.write(fd, data)
    except BlockingIOError:
        sent = 0
    except OSError:
        SUBSCRIBERS.discard(fd)
        return
    if sent < len(data):
        PENDING[fd] = bytearray(data[sent:])
        gevent.spawn(flush, fd)


def publish():
    uwsgi.websocket_send(f"ready {os.getpid()}".encode())
    while True:
        try:
            msg = uwsgi.websocket_recv()
        except OSError:
            return
        data = frame(msg)  # framed once for every subscriber
        for fd in list(SUBSCRIBERS):  # write() may drop a dead one
            write(fd, data)


def subscribe():
    fd = uwsgi.connection_fd()
    uwsgi.websocket_send(f"joined {os.getpid()}".encode())
    SUBSCRIBERS.add(fd)
    try:
        while True:
            uwsgi.websocket_recv()  # answers pings; raises once closed
    except OSError:
        pass
    finally:
        SUBSCRIBERS.discard(fd)
        PENDING.pop(fd, None)
