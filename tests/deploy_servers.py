"""Real uWSGI, nginx and HAProxy started from the files of ``deploy/``, for tests.

Each file is rendered for the test: the placeholders a user would change
(ports, certificate paths, the app) are replaced by what the test made, and
nothing else. :func:`render` fails when a value it replaces is no longer in
the file, so the tests follow the files as they change. Every server listens
on 127.0.0.1 only, on free ports.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from tests.uwsgi_server import CRASH_MARKERS, REPO_ROOT, UWSGI, free_port, poll_until

DEPLOY = REPO_ROOT / "deploy"

#: nginx's and HAProxy's log lines that mean something went wrong.
PROXY_PROBLEMS = ("[emerg]", "[alert]", "[crit]", "ALERT", "segfault")


def render(template: str, replacements: Mapping[str, str]) -> str:
    """``template`` with each key replaced by its value; every key must occur."""
    for old, new in replacements.items():
        if old not in template:
            raise AssertionError(f"{old!r} is not in the template any more: update the test")
        template = template.replace(old, new)
    return template


def read_ini(path: Path) -> Dict[str, str]:
    """The options of a uWSGI ini file's ``[uwsgi]`` section (comments dropped)."""
    options: Dict[str, str] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith((";", "#")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "uwsgi":
            key, _, value = line.partition("=")
            options[key.strip()] = value.strip()
    return options


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, made by the test."""

    cert: Path
    key: Path
    #: Certificate and key in one file, as HAProxy wants them.
    combined: Path

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts this certificate (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.cert))


def make_certificate(directory: Path) -> Certificate:
    """Make a self-signed certificate with ``openssl`` (valid for two days)."""
    cert, key, combined = directory / "cert.pem", directory / "key.pem", directory / "combined.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    return Certificate(cert, key, combined)


class Server:
    """A server process with its output in a log file; stopped with a signal."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log_path = directory / f"{self.name}.log"
        self.process: Optional[subprocess.Popen[bytes]] = None

    def command(self) -> List[str]:
        raise NotImplementedError

    def environment(self) -> Dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> Server:
        """Start the process; wait until :meth:`ready` (fail if it exits first)."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=REPO_ROOT,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        process = self.process
        if not poll_until(lambda: process.poll() is not None or self.ready(), timeout):
            self.stop()
            raise RuntimeError(f"{self.name} did not become ready in {timeout} s:\n{self.log()}")
        if process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {process.returncode}:\n{self.log()}")
        return self

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """Stop with :attr:`stop_signal` (kill after ``timeout``); the exit status."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(self.stop_signal)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        return process.returncode

    def log(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def problems(self) -> List[str]:
        """Log lines that say something went wrong."""
        return [
            line
            for line in self.log().splitlines()
            if any(marker in line for marker in PROXY_PROBLEMS)
        ]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class IniUwsgi(Server):
    """uWSGI started with ``--ini``, from ``deploy/uwsgi.ini`` rendered for the test.

    ``protocol`` ``"http"`` keeps the ini's ``http-socket`` (for proxy_pass
    and HAProxy); ``"uwsgi"`` makes it ``socket`` (for nginx's uwsgi_pass),
    as the ini's comment says.
    """

    name = "uwsgi"

    def __init__(
        self,
        directory: Path,
        module: str,
        *,
        protocol: str = "http",
        env: Optional[Mapping[str, str]] = None,
        extra: Sequence[str] = (),
    ) -> None:
        super().__init__(directory)
        self.port = free_port()
        self.log_path = directory / f"uwsgi-{self.port}.log"
        template = (DEPLOY / "uwsgi.ini").read_text()
        address = f"127.0.0.1:{self.port}"
        socket_line = f"http-socket = {address}" if protocol == "http" else f"socket = {address}"
        text = render(
            template,
            {"module = examples.chat:app": f"module = {module}",
             "http-socket = 127.0.0.1:8080": socket_line},
        )  # fmt: skip
        self.ini = directory / f"uwsgi-{self.port}.ini"
        self.ini.write_text(text + "".join(f"{line}\n" for line in extra))
        self.processes = int(read_ini(self.ini)["processes"])
        self.env = dict(env or {})

    def command(self) -> List[str]:
        return [UWSGI, "--ini", str(self.ini)]

    def environment(self) -> Dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(REPO_ROOT), **self.env)

    def ready(self) -> bool:
        log = self.log()
        return (
            "WSGI app 0" in log
            and log.count("spawned uWSGI worker") >= self.processes
            and _port_open(self.port)
        )

    def problems(self) -> List[str]:
        return [
            line
            for line in self.log().splitlines()
            if any(marker.lower() in line.lower() for marker in CRASH_MARKERS)
            or "Traceback" in line
        ]


class Nginx(Server):
    """nginx with one site from ``deploy/`` (rendered), in a main config of the test's."""

    name = "nginx"

    def __init__(
        self,
        directory: Path,
        site: str,
        *,
        upstream_port: int,
        certificate: Certificate,
        timeout: Optional[str] = None,
        deploy: Path = DEPLOY,
    ) -> None:
        super().__init__(directory / f"nginx-{site}")
        self.directory.mkdir()
        self.port = free_port()
        self.http_port = free_port()
        template_port = "3031" if "uwsgi" in site else "8080"
        prefix = "uwsgi" if "uwsgi" in site else "proxy"
        replacements = {
            "listen 80;": f"listen 127.0.0.1:{self.http_port};",
            "listen [::]:80;\n": "",
            "listen 443 ssl http2;": f"listen 127.0.0.1:{self.port} ssl http2;",
            "listen [::]:443 ssl http2;\n": "",
            "/etc/ssl/certs/example.com.pem": str(certificate.cert),
            "/etc/ssl/private/example.com.key": str(certificate.key),
            f"server 127.0.0.1:{template_port};": f"server 127.0.0.1:{upstream_port};",
        }
        if timeout is not None:
            replacements[f"{prefix}_read_timeout 60s;"] = f"{prefix}_read_timeout {timeout};"
            replacements[f"{prefix}_send_timeout 60s;"] = f"{prefix}_send_timeout {timeout};"
        site_path = self.directory / "site.conf"
        site_path.write_text(render((deploy / site).read_text(), replacements))
        # The site includes uwsgi_params from nginx's configuration directory.
        shutil.copy(nginx_conf_dir() / "uwsgi_params", self.directory / "uwsgi_params")
        d = self.directory
        temp_paths = "".join(
            f"    {kind}_temp_path {d / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.conf = d / "nginx.conf"
        self.conf.write_text(
            ("user root;\n" if os.geteuid() == 0 else "")
            + "daemon off;\nworker_processes 1;\n"
            + f"pid {d / 'nginx.pid'};\nerror_log {d / 'error.log'} info;\n"
            + "events { worker_connections 2048; }\n"
            + "http {\n"
            + f"    access_log {d / 'access.log'};\n{temp_paths}"
            + f"    include {site_path};\n}}\n"
        )

    def command(self) -> List[str]:
        return ["nginx", "-c", str(self.conf), "-p", f"{self.directory}/"]

    def check(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on the rendered configuration."""
        return subprocess.run([*self.command(), "-t"], capture_output=True, text=True, timeout=30)

    def ready(self) -> bool:
        return _port_open(self.port)

    def log(self) -> str:
        text = super().log()
        error_log = self.directory / "error.log"
        if error_log.exists():
            text += error_log.read_text(errors="replace")
        return text


class Haproxy(Server):
    """HAProxy with ``deploy/haproxy.cfg`` rendered, in the foreground."""

    name = "haproxy"

    def __init__(
        self,
        directory: Path,
        *,
        upstream_port: int,
        certificate: Certificate,
        timeout: Optional[str] = None,
    ) -> None:
        super().__init__(directory / "haproxy")
        self.directory.mkdir()
        self.log_path = self.directory / "haproxy.log"
        self.port = free_port()
        self.http_port = free_port()
        replacements = {
            "bind :80\n": f"bind 127.0.0.1:{self.http_port}\n",
            "bind :443 ssl": f"bind 127.0.0.1:{self.port} ssl",
            "/etc/haproxy/certs/example.com.pem": str(certificate.combined),
            "server app 127.0.0.1:8080": f"server app 127.0.0.1:{upstream_port}",
        }
        if timeout is not None:
            replacements["timeout tunnel 1h"] = f"timeout tunnel {timeout}"
        self.conf = self.directory / "haproxy.cfg"
        self.conf.write_text(render((DEPLOY / "haproxy.cfg").read_text(), replacements))

    def command(self) -> List[str]:
        return ["haproxy", "-db", "-f", str(self.conf)]

    def check(self) -> subprocess.CompletedProcess[str]:
        """``haproxy -c`` on the rendered configuration."""
        return subprocess.run(
            ["haproxy", "-c", "-f", str(self.conf)], capture_output=True, text=True, timeout=30
        )

    def ready(self) -> bool:
        return _port_open(self.port)


def nginx_conf_dir() -> Path:
    """nginx's configuration directory (where uwsgi_params is), from ``nginx -V``."""
    output = subprocess.run(["nginx", "-V"], capture_output=True, text=True, timeout=30).stderr
    for part in output.split():
        if part.startswith("--conf-path="):
            return Path(part.split("=", 1)[1]).parent
    return Path("/etc/nginx")


def missing_programs(*names: str) -> List[str]:
    """The programs among ``names`` that are not on PATH."""
    return [name for name in names if shutil.which(name) is None]
