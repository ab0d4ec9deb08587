"""``flask websocket run``: start the app under uWSGI with the right flags.

The flags people get wrong (``--http-websockets``, ``--gevent``, the
callable, ``--die-on-term``, ``--http-buffer-size``, ``--need-app``) are set
for them, and the command line is printed so it can be reused as it is.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from typing import List, Sequence

import click
from flask.cli import ScriptInfo, with_appcontext

__all__ = ["build_uwsgi_command", "find_uwsgi", "websocket_cli"]

#: Environment variable naming the app for ``flask_websocket.wsgi``.
APP_ENV = "FLASK_WEBSOCKET_APP"


@click.group("websocket", help="Serve the app's WebSocket routes with uWSGI.")
def websocket_cli() -> None:
    """The ``flask websocket`` command group."""


def find_uwsgi() -> str:
    """The uwsgi binary: the one installed beside this Python first, then PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "uwsgi")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("uwsgi")
    if found is None:
        raise click.ClickException(
            "uwsgi is not installed: pip install uwsgi (it builds from source "
            "and needs a C compiler, the Python headers and libssl-dev)"
        )
    return found


def build_uwsgi_command(
    app_import: str,
    *,
    uwsgi: str = "uwsgi",
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
    connections: int = 1000,
    http_socket: bool = False,
    extra: Sequence[str] = (),
) -> List[str]:
    """The uWSGI command line that serves ``app_import`` with WebSockets.

    ``app_import`` is ``module:attribute``, loaded by uWSGI's ``--module``.
    ``connections`` becomes ``--gevent``: the most connections one worker
    holds at once (connection N+1 waits in the handshake), each async core
    costing about 6 KB of memory up front.
    """
    address = f"{host}:{port}"
    command = [uwsgi, "--master", "--need-app", "--die-on-term"]
    if http_socket:
        command += ["--http-socket", address]
    else:
        command += ["--http", address, "--http-websockets", "--http-buffer-size", "65536"]
    command += [
        "--gevent",
        str(connections),
        "--gevent-early-monkey-patch",
        "--processes",
        str(workers),
        "--module",
        app_import,
    ]
    command += list(extra)
    return command


def _uwsgi_target(info: ScriptInfo) -> str:
    """``module:attribute`` for uWSGI's --module, from ``flask --app``'s value."""
    path = info.app_import_path or os.environ.get("FLASK_APP")
    if path:
        module, _, attribute = path.partition(":")
        if attribute.isidentifier():
            return f"{module}:{attribute}"
        if not attribute:
            imported = __import__(module, fromlist=["_"])
            for name in ("app", "application"):
                if hasattr(imported, name):
                    return f"{module}:{name}"
    # A factory call or an app found some other way: load it the same way
    # Flask does, through a small module that reads the import path.
    os.environ[APP_ENV] = path or ""
    return "flask_websocket.wsgi:app"


@websocket_cli.command("run")
@click.option("--host", "-h", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", "-p", default=8080, show_default=True, help="Port to listen on.")
@click.option("--workers", default=1, show_default=True, help="uWSGI worker processes.")
@click.option(
    "--connections",
    default=1000,
    show_default=True,
    help="Most connections per worker (uWSGI --gevent N).",
)
@click.option(
    "--http-socket",
    is_flag=True,
    help="Serve HTTP from the workers directly (no router process): fastest, "
    "but no keep-alive or buffering in front of the app, and a client that sends "
    "its request slowly holds a worker's core: run it behind a proxy.",
)
@click.option("--dry-run", is_flag=True, help="Print the uWSGI command line and exit.")
@click.argument("uwsgi_args", nargs=-1, type=click.UNPROCESSED)
@with_appcontext
def run_command(
    host: str,
    port: int,
    workers: int,
    connections: int,
    http_socket: bool,
    dry_run: bool,
    uwsgi_args: Sequence[str],
) -> None:
    """Run the app under uWSGI; extra arguments go to uwsgi as they are."""
    info = click.get_current_context().ensure_object(ScriptInfo)
    target = _uwsgi_target(info)
    command = build_uwsgi_command(
        target,
        uwsgi=find_uwsgi() if not dry_run else "uwsgi",
        host=host,
        port=port,
        workers=workers,
        connections=connections,
        http_socket=http_socket,
        extra=uwsgi_args,
    )
    printable = " ".join(shlex.quote(part) for part in command)
    if target.startswith("flask_websocket.wsgi"):
        printable = f"{APP_ENV}={shlex.quote(os.environ[APP_ENV])} {printable}"
    click.echo(f" * uWSGI: {printable}", err=True)
    if http_socket:
        click.echo(
            " * --http-socket: each worker reads request heads itself, so a client that "
            "sends its head slowly holds one of its cores. Put a proxy that bounds the "
            "head's time in front (nginx's client_header_timeout; docs: security).",
            err=True,
        )
    if dry_run:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
