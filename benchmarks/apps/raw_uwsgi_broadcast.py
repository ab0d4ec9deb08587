"""Baseline broadcast (fan-out) server: naive fan-out on uWSGI's own API.

No rooms, no framing of our own: each subscriber's request greenlet holds a
gevent ``Queue`` registered in a module-level set and loops
``msg = q.get(); uwsgi.websocket_send(msg)``; the publisher's messages are
put into every queue. So every delivery costs a queue put, a greenlet switch
and a ``websocket_send`` (which frames the message again for each
subscriber). ``uwsgi.websocket_recv_nb()`` is called now and then (after 1 s
without messages, and every 256 messages) to answer pings and notice closes.

Paths (any other path is a subscriber):

* ``/sub`` - subscriber: sends ``"joined <worker pid>"`` once registered.
* ``/pub`` - publisher: sends ``"ready <worker pid>"``, then each received
  message goes to every subscriber.

Run under uWSGI with gevent, from the repository root::

    uwsgi --master --need-app --die-on-term --gevent 2000 \\
        --http-socket 127.0.0.1:8000 --module benchmarks.apps.raw_uwsgi_broadcast:app
"""

import os

import uwsgi
from gevent.queue import Empty, Queue

#: The queues of the subscribers connected to this worker.
SUBSCRIBERS = set()

IDLE_POLL = 1.0  # seconds without a message before polling the socket
POLL_EVERY = 256  # messages between polls while busy


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


def publish():
    uwsgi.websocket_send(f"ready {os.getpid()}".encode())
    while True:
        try:
            msg = uwsgi.websocket_recv()
        except OSError:
            return
        # put() on an unbounded queue never switches greenlets, so the set
        # cannot change during the loop
        for q in SUBSCRIBERS:
            q.put(msg)


def subscribe():
    q = Queue()
    SUBSCRIBERS.add(q)
    try:
        uwsgi.websocket_send(f"joined {os.getpid()}".encode())
        sent = 0
        while True:
            try:
                msg = q.get(timeout=IDLE_POLL)
            except Empty:
                uwsgi.websocket_recv_nb()  # answers pings; raises once closed
                continue
            uwsgi.websocket_send(msg)
            sent += 1
            if sent % POLL_EVERY == 0:
                uwsgi.websocket_recv_nb()
    except OSError:
        pass
    finally:
        SUBSCRIBERS.discard(q)
