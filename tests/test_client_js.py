"""The JavaScript client is served by every app the extension initialises (no server, no browser).

tests/test_client_browser.py runs it in Chromium.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Blueprint, Flask, render_template_string, url_for

from flask_websocket import WebSocket
from flask_websocket.extension import CLIENT_BLUEPRINT
from tests.uwsgi_server import REPO_ROOT

CLIENT = REPO_ROOT / "flask_websocket" / "static" / "client.js"


def test_the_client_is_served_at_its_url() -> None:
    app = Flask(__name__)
    WebSocket(app)
    with app.test_client() as http:
        response = http.get("/_websocket/client.js")
        assert response.status_code == 200
        assert response.mimetype in ("text/javascript", "application/javascript")
        assert response.get_data() == CLIENT.read_bytes()
        response.close()
        assert http.get("/_websocket/nothing.js").status_code == 404
    with app.test_request_context():
        assert url_for(f"{CLIENT_BLUEPRINT}.static", filename="client.js") == (
            "/_websocket/client.js"
        )


def test_url_for_from_a_blueprint_and_beside_a_catch_all_route() -> None:
    """An app's own blueprint links to it; the app's catch-all rule does not take its URL."""
    app = Flask(__name__)
    pages = Blueprint("pages", __name__, url_prefix="/pages")

    @pages.get("/chat")
    def chat() -> str:
        return render_template_string(
            "<script src=\"{{ url_for('flask_websocket.static', filename='client.js') }}\">"
        )

    @app.get("/<path:anything>")
    def catch_all(anything: str) -> str:
        return f"the app's {anything}"

    app.register_blueprint(pages)
    websocket = WebSocket()
    websocket.init_app(app)
    with app.test_client() as http:
        assert '<script src="/_websocket/client.js">' in http.get("/pages/chat").get_data(
            as_text=True
        )
        response = http.get("/_websocket/client.js")
        assert response.get_data() == CLIENT.read_bytes()
        response.close()
        assert http.get("/elsewhere").get_data(as_text=True) == "the app's elsewhere"


def test_one_extension_serves_it_to_each_of_its_apps() -> None:
    websocket = WebSocket()
    apps = [Flask(f"app{i}") for i in range(2)]
    for app in apps:
        websocket.init_app(app)
    for app in apps:
        with app.test_client() as http:
            response = http.get("/_websocket/client.js")
            assert response.status_code == 200
            response.close()


def test_the_package_ships_it(tmp_path: Path) -> None:
    """setup.cfg's package_data puts it in the built package."""
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build", "--build-base", str(tmp_path)],
        cwd=REPO_ROOT, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    built = tmp_path / "lib" / "flask_websocket" / "static" / "client.js"
    assert built.read_bytes() == CLIENT.read_bytes()


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_it_parses() -> None:
    """The browser tests say it runs; this says quickly that it is valid JavaScript."""
    node = shutil.which("node")
    assert node is not None
    subprocess.run([node, "--check", str(CLIENT)], check=True, timeout=60)
