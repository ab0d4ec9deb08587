"""Baseline echo server: a plain WSGI app using uWSGI's own WebSocket API.

Run under uWSGI with gevent, e.g. from the repository root::

    uwsgi --master --need-app --die-on-term --gevent 1000 \
        --http-socket 127.0.0.1:8000 --module benchmarks.apps.raw_uwsgi_echo:app

Any path is accepted (the benchmarks use ``/echo``). Each received message is
sent straight back with ``uwsgi.websocket_send``, which always emits a text
frame; the benchmark client only sends text, so replies compare equal. On
``/binary`` (peers.py's 64 KiB binary scenario) replies go out with
``uwsgi.websocket_send_binary`` instead: uWSGI's API does not say which kind
a received message was.
"""

import uwsgi


def app(env, start_response):
    key = env.get("HTTP_SEC_WEBSOCKET_KEY")
    if not key:
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"WebSocket upgrade required\n"]
    uwsgi.websocket_handshake(key, env.get("HTTP_ORIGIN", ""))
    send = (
        uwsgi.websocket_send_binary if env.get("PATH_INFO") == "/binary" else uwsgi.websocket_send
    )
    while True:
        try:
            msg = uwsgi.websocket_recv()
        except OSError:
            break
        try:
            send(msg)
        except OSError:
            break
    return []
