"""The servers of peers.py: flask-websocket, raw uWSGI and the peers, and how to reach them.

* ``ProcessServer`` - a ``benchlib.Server`` for a server that is not uWSGI:
  the harness binds the loopback port, then starts the server's process(es)
  pinned with ``taskset`` and the listening socket inherited (its number in
  ``BENCH_LISTEN_FD``, or ``{fd}`` in the command line), so two workers share
  one port the way a process manager does it. The workers are those
  processes (there is no master).
* The Socket.IO client: Flask-SocketIO is spoken to in Engine.IO 4 /
  Socket.IO 5 framing over the same picows connection. ``ws_connect`` of a
  Socket.IO server wraps the benchmark's listener (so echo.py's, idle_memory.py's
  and broadcast.py's listeners run unchanged): frames ``42["m","..."]`` and
  binary attachments reach the listener as plain messages, Engine.IO pings
  are answered, and ``send()`` on the returned transport emits event ``"m"``.
* ``PEERS`` - every server of the comparison, how to start it for a scenario,
  and which scenarios it cannot run, with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import benchlib as bl
import psutil

# ---------------------------------------------------------------------------
# servers that are not uWSGI


@dataclass
class ProcessServer(bl.Server):
    """One or more server processes sharing a listening socket the harness made.

    ``command`` is the argv (``{fd}`` replaced by the listening socket's
    descriptor); ``processes`` copies of it are started; each counts as ready
    once its log line matches ``ready_pattern`` (one line per process).
    ``protocol`` is ``"ws"`` or ``"socketio"``.
    """

    command: list = field(default_factory=list)
    processes: int = 1
    ready_pattern: str = r"peer ready \d+"
    protocol: str = "ws"
    procs: list = field(default_factory=list)  # subprocess.Popen
    _sock: socket.socket | None = None

    def start(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((bl.HOST, 0))
        self._sock.listen(1024)
        self.port = self._sock.getsockname()[1]
        fd = self._sock.fileno()
        os.set_inheritable(fd, True)
        cmd = [a.replace("{fd}", str(fd)) for a in self.command]
        self.argv = ["taskset", "-c", self.cores or str(bl.SERVER_CORE), *cmd]
        env = dict(os.environ)
        env.update(self.extra_env)
        env["BENCH_LISTEN_FD"] = str(fd)
        env["PYTHONPATH"] = bl.REPO_ROOT + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
        )
        env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        env["PYTHONUNBUFFERED"] = "1"
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        for _ in range(self.processes):
            self.procs.append(
                subprocess.Popen(
                    self.argv,
                    cwd=bl.REPO_ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(fd,),
                    start_new_session=True,
                )
            )
        self.proc = self.procs[0]
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + bl.SERVER_START_TIMEOUT
        pattern = re.compile(self.ready_pattern)
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise bl.ServerError(
                        f"{self.name}: server process exited with code {p.returncode} "
                        "during start-up",
                        self.log_tail(),
                    )
            if len(pattern.findall(self.log_text())) >= self.processes:
                self.workers = [psutil.Process(p.pid) for p in self.procs]
                return
            time.sleep(0.05)
        raise bl.ServerError(
            f"{self.name}: not ready within {bl.SERVER_START_TIMEOUT:.0f}s", self.log_tail()
        )

    def master_cpu(self) -> float:
        return 0.0  # the workers are the processes we started

    def check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise bl.ServerError(
                    f"{self.name}: server process {p.pid} exited (code {p.returncode})",
                    self.log_tail(),
                )

    def stop(self) -> int | None:
        """SIGTERM every process; SIGKILL (of our own pids) after the timeout."""
        try:
            for p in self.procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + bl.SERVER_STOP_TIMEOUT
            for p in self.procs:
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    print(f"warning: {self.name}: pid {p.pid} ignored SIGTERM, killing",
                          file=sys.stderr)  # fmt: skip
                    p.kill()
                    p.wait(timeout=5)
            return self.proc.returncode if self.proc else None
        finally:
            for f in (self._sock, self._log):
                if f is not None:
                    f.close()
            self._sock = self._log = None

    async def ws_connect(self, factory, path=None, **kwargs):
        if self.protocol != "socketio":
            return await super().ws_connect(factory, path, **kwargs)
        import picows

        role = (path or self.path).strip("/")
        url = self.ws_url(f"/socket.io/?EIO=4&transport=websocket&role={role}")
        transport, listener = await picows.ws_connect(_socketio_factory(factory), url, **kwargs)
        try:
            await asyncio.wait_for(listener.sio_ready, SIO_CONNECT_TIMEOUT)
        except BaseException:
            transport.disconnect(graceful=False)
            raise
        return listener.sio, listener


# ---------------------------------------------------------------------------
# Socket.IO over picows

SIO_CONNECT_TIMEOUT = 15.0
_EVENT = b'42["m",'  # an event "m" with one argument
_EVENT_STR = b'42["m","'
_BINARY_EVENT = b'451-["m",{"_placeholder":true,"num":0}]'


class _Frame:
    """A decoded Socket.IO message, shaped like the picows frames the listeners read."""

    __slots__ = ("_payload", "msg_type")
    fin = True

    def __init__(self, msg_type, payload: bytes):
        self.msg_type = msg_type
        self._payload = payload

    def get_payload_as_bytes(self) -> bytes:
        return self._payload


class SocketIOTransport:
    """A picows transport whose ``send()`` emits event ``"m"`` (text or binary)."""

    def __init__(self, transport):
        import picows

        self._t = transport
        self._text = picows.WSMsgType.TEXT
        self._binary = picows.WSMsgType.BINARY

    def send(self, msg_type, data: bytes) -> None:
        if msg_type is self._binary:
            self._t.send(self._text, _BINARY_EVENT)  # then the attachment
            self._t.send(self._binary, data)
        elif b'"' in data or b"\\" in data or not data.isascii():
            self._t.send(self._text, _EVENT + json.dumps(data.decode()).encode() + b"]")
        else:  # the benchmarks' payloads: no JSON escaping needed
            self._t.send(self._text, _EVENT_STR + data + b'"]')

    def __getattr__(self, name):
        return getattr(self._t, name)


_SIO_CLASSES: dict = {}


def _socketio_factory(factory):
    """Wrap a picows listener factory so its listener speaks Socket.IO."""

    def make():
        listener = factory()
        cls = type(listener)
        sio_cls = _SIO_CLASSES.get(cls)
        if sio_cls is None:
            # call the wrapped listener's own callbacks only: picows' base
            # class checks the transport's type, and ours is a proxy
            own = {
                name: any(name in vars(k) for k in cls.__mro__ if k.__module__ != "picows.picows")
                for name in ("on_ws_connected", "on_ws_disconnected")
            }
            sio_cls = _SIO_CLASSES[cls] = type(
                f"SocketIO{cls.__name__}", (_SocketIOMixin, cls), {"_sio_own": own}
            )
        listener.__class__ = sio_cls
        return listener

    return make


class _SocketIOMixin:
    """Engine.IO/Socket.IO framing between picows and a benchmark listener."""

    def on_ws_connected(self, transport):
        import picows

        self._sio_text = picows.WSMsgType.TEXT
        self._sio_binary = picows.WSMsgType.BINARY
        self.sio = SocketIOTransport(transport)
        self.sio_ready = asyncio.get_running_loop().create_future()
        self._sio_attachment = False
        if self._sio_own["on_ws_connected"]:
            super().on_ws_connected(self.sio)

    def on_ws_frame(self, transport, frame):
        mt = frame.msg_type
        if mt is self._sio_text:
            data = frame.get_payload_as_bytes()
            if data.startswith(_EVENT_STR) and data.endswith(b'"]') and b"\\" not in data:
                super().on_ws_frame(self.sio, _Frame(mt, data[8:-2]))
            elif data.startswith(_EVENT):
                _, arg = json.loads(data[2:])
                super().on_ws_frame(self.sio, _Frame(mt, arg.encode()))
            elif data.startswith(b"45"):  # binary event: its data is the next frame
                self._sio_attachment = True
            elif data == b"2":  # Engine.IO ping
                transport.send(mt, b"3")
            elif data.startswith(b"0{"):  # Engine.IO open: connect to namespace "/"
                transport.send(mt, b"40")
            elif data.startswith(b"40"):
                if not self.sio_ready.done():
                    self.sio_ready.set_result(None)
            elif data.startswith(b"44"):
                if not self.sio_ready.done():
                    self.sio_ready.set_exception(ConnectionError(f"Socket.IO refused: {data!r}"))
            elif data in (b"1", b"41", b"6"):  # close / disconnect / noop
                pass
            else:
                super().on_ws_frame(self.sio, frame)  # counts as unexpected there
        elif mt is self._sio_binary and self._sio_attachment:
            self._sio_attachment = False
            super().on_ws_frame(self.sio, _Frame(mt, frame.get_payload_as_bytes()))
        else:
            super().on_ws_frame(self.sio, frame)

    def on_ws_disconnected(self, transport):
        if not self.sio_ready.done():
            self.sio_ready.set_exception(ConnectionError("disconnected before Socket.IO connect"))
        if self._sio_own["on_ws_disconnected"]:
            super().on_ws_disconnected(self.sio)


# ---------------------------------------------------------------------------
# the servers compared

FWS_ECHO = "benchmarks.apps.flask_websocket_echo:app"
FWS_FANOUT = "benchmarks.apps.flask_websocket_broadcast:app"
RAW_ECHO = "benchmarks.apps.raw_uwsgi_echo:app"
RAW_FANOUT = "benchmarks.apps.raw_uwsgi_broadcast:app"

NO_HUB = "an app-kept set of connections reaches only its own worker process: {} has no hub"


@dataclass
class Peer:
    """A server of the comparison.

    kind ``uwsgi``: ``echo_app``/``fanout_app`` are uWSGI module specs,
    ``model`` the concurrency flags (``{n}`` = connections + margin). Kind
    ``process``: ``command`` is the argv of one worker. ``group``: ``ours``,
    ``ceiling`` (raw uWSGI) or ``peer``. ``cannot``: scenario -> reason.
    ``hubs``: two-worker fan-out variants, hub name -> environment.
    """

    name: str
    label: str
    group: str
    kind: str
    docs: str
    echo_app: str = ""
    fanout_app: str = ""
    model: tuple = ("--gevent", "{n}")
    command: tuple = ()
    ready_pattern: str = r"peer ready \d+"
    protocol: str = "ws"
    large_path: str = "/echo"
    fanout_env: dict = field(default_factory=dict)
    hubs: dict = field(default_factory=dict)
    fanout_note: str = ""
    cannot: dict = field(default_factory=dict)
    code_root: str | None = None  # kind uwsgi: import the package from here (--baseline)

    def server(
        self, scenario: str, log_path: str, conns: int, hub: str | None = None, **kw
    ) -> bl.Server:
        """A server for `scenario` ("echo", "large", "fanout", "idle", "connect").

        ``hub``: the two-worker variant (a key of ``hubs``); its environment
        gets ``{redis}`` replaced by ``kw["redis_url"]``.
        """
        fanout = scenario == "fanout"
        processes = 2 if hub else 1
        env = dict(self.fanout_env) if fanout else {}
        if hub:
            env = {
                k: v.replace("{redis}", kw.get("redis_url") or "")
                for k, v in self.hubs[hub].items()
            }
        path = self.large_path if scenario == "large" else ("/sub" if fanout else "/echo")
        cores = "0,1" if hub else None
        if self.kind == "uwsgi":
            extra = ["--processes", str(processes)]
            if hub == "redis":
                extra.append("--gevent-early-monkey-patch")
            return bl.Server(
                name=self.name,
                mode="http-socket",
                gevent=conns + 64,
                log_path=log_path,
                module_spec=self.fanout_app if fanout else self.echo_app,
                ws_path=path,
                model_args=[a.format(n=conns + 64) for a in self.model],
                extra_args=extra,
                extra_env=env,
                expect_workers=processes,
                cores=cores,
                code_root=self.code_root,
            )
        return ProcessServer(
            name=self.name,
            mode="process",
            gevent=0,
            log_path=log_path,
            ws_path=path,
            extra_env=env,
            command=[sys.executable if a == "{python}" else a for a in self.command],
            processes=processes,
            ready_pattern=self.ready_pattern,
            protocol=self.protocol,
            cores=cores,
        )


def _venv_script(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def _set_peer(name: str, label: str, docs: str, app: str, fanout: str) -> Peer:
    """A peer without rooms: its one-worker fan-out is an app-kept set, no two-worker one."""
    return Peer(
        name,
        label,
        "peer",
        "process",
        docs,
        command=("{python}", "-m", f"benchmarks.apps.{app}"),
        fanout_note=f"{fanout} ({name} has no rooms)",
        cannot={"fanout-2w": NO_HUB.format(name)},
    )


PEERS = {
    p.name: p
    for p in [
        Peer(
            "fws-gevent",
            "flask-websocket (uWSGI+gevent)",
            "ours",
            "uwsgi",
            "this repository: uWSGI --gevent, memory hub (local/redis with 2 workers)",
            echo_app=FWS_ECHO,
            fanout_app=FWS_FANOUT,
            fanout_env={"WEBSOCKET_HUB_URL": "memory://"},
            hubs={
                "local": {"WEBSOCKET_HUB_URL": "local://"},
                "redis": {"WEBSOCKET_HUB_URL": "{redis}"},
            },
        ),
        Peer(
            "fws-asyncio",
            "flask-websocket (uWSGI+asyncio)",
            "ours",
            "uwsgi",
            "this repository: uWSGI --asyncio N --greenlet, memory hub (local with 2 workers)",
            echo_app=FWS_ECHO,
            fanout_app=FWS_FANOUT,
            model=("--asyncio", "{n}", "--greenlet"),
            fanout_env={"WEBSOCKET_HUB_URL": "memory://"},
            hubs={"local": {"WEBSOCKET_HUB_URL": "local://"}},
        ),
        Peer(
            "raw",
            "raw uWSGI API",
            "ceiling",
            "uwsgi",
            "uWSGI's WebSocket API (websocket_handshake/recv/send), uWSGI --gevent",
            echo_app=RAW_ECHO,
            fanout_app=RAW_FANOUT,
            large_path="/binary",
            fanout_note="app-kept gevent queue per subscriber (no rooms in uWSGI's API)",
            cannot={"fanout-2w": NO_HUB.format("uWSGI's WebSocket API")},
        ),
        _set_peer(
            "flask-sock",
            "flask-sock (gevent)",
            "flask-sock README (production: Gunicorn, Eventlet or gevent); gevent "
            "WSGIServer as in Flask's 'Deploying to Production: gevent'",
            "flask_sock_app",
            "app-kept set of connections",
        ),
        Peer(
            "flask-socketio",
            "Flask-SocketIO (gevent)",
            "peer",
            "process",
            "Flask-SocketIO 'Deployment: Embedded Server' (socketio.run on gevent with "
            "gevent-websocket), async_mode='gevent', transports=['websocket']; Redis "
            "message_queue with 2 workers",
            command=("{python}", "-m", "benchmarks.apps.flask_socketio_app"),
            protocol="socketio",
            hubs={"redis": {"BENCH_REDIS_URL": "{redis}"}},
        ),
        Peer(
            "channels",
            "Django Channels (Daphne)",
            "peer",
            "process",
            "Channels 'Installation' (channels[daphne]) and 'Deploying' (daphne --fd under "
            "a process manager); InMemoryChannelLayer, channels_redis with 2 workers",
            command=(
                _venv_script("daphne"),
                "--fd",
                "{fd}",
                "benchmarks.apps.channels_app:application",
            ),
            ready_pattern=r"Listening on TCP address",
            hubs={"redis": {"BENCH_REDIS_URL": "{redis}"}},
        ),
        _set_peer(
            "websockets",
            "websockets (asyncio)",
            "websockets 'Deploy' (one process per core) and 'Broadcasting' "
            "(websockets.asyncio.server.serve, broadcast())",
            "websockets_app",
            "broadcast() over an app-kept set",
        ),
        _set_peer(
            "gevent-websocket",
            "gevent-websocket",
            "gevent-websocket README (gevent WSGIServer, handler_class=WebSocketHandler)",
            "gevent_websocket_app",
            "app-kept set of connections",
        ),
    ]
}

# Python distributions whose versions every result records.
VERSIONED = (
    "Flask", "Werkzeug", "gevent", "greenlet", "uWSGI", "websockets", "flask-sock",
    "simple-websocket", "Flask-SocketIO", "python-socketio", "python-engineio",
    "Django", "channels", "daphne", "Twisted", "asgiref", "channels-redis", "redis",
    "gevent-websocket", "picows", "uvloop", "psutil", "matplotlib",
)  # fmt: skip


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["redis-server"] = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    return out


def missing_packages() -> list[str]:
    """The peers' Python packages that do not import (benchmarks/requirements.txt)."""
    mods = ("flask_sock", "simple_websocket", "flask_socketio", "geventwebsocket", "channels",
            "daphne", "django", "channels_redis", "websockets", "picows", "uvloop")  # fmt: skip
    out = []
    for m in mods:
        try:
            __import__(m)
        except ImportError:
            out.append(m)
    return out
