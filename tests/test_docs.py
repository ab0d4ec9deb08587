"""The documentation site agrees with the code (scripts/docs.sh builds it).

- Every configuration key of the extension is documented, with its default,
  and nothing else is: adding a key to ``CONFIG_DEFAULTS`` without a
  ``.. py:data::`` entry in docs/configuration.rst fails here.
- Python code on the site's pages comes from files that tests run
  (``literalinclude``), never from blocks written into the page.
- Every example file under docs/examples/ is run by some test.
"""

from __future__ import annotations

import ast
import re
from typing import Any, Dict, List, Tuple

from flask_websocket.extension import CONFIG_DEFAULTS
from tests.uwsgi_server import REPO_ROOT

DOCS = REPO_ROOT / "docs"
EXAMPLES = DOCS / "examples"
TESTS = REPO_ROOT / "tests"
#: The maintainers' notes (Markdown): records of probes, not examples to run.
NOTES = {"design.md", "ugreen.md", "uwsgi-models-probe.md"}

_DATA = re.compile(r"^\.\. py:data:: (\S+)\n((?:[ \t]+\S.*\n|[ \t]*\n)*)", re.MULTILINE)
_VALUE = re.compile(r"^\s+:value: (.+)$", re.MULTILINE)


def documented_settings() -> Dict[str, Tuple[str, str]]:
    """``{key: (default as written, description)}`` from docs/configuration.rst."""
    page = (DOCS / "configuration.rst").read_text()
    settings: Dict[str, Tuple[str, str]] = {}
    for match in _DATA.finditer(page):
        name, body = match.group(1), match.group(2)
        assert name not in settings, f"{name} is documented twice"
        value = _VALUE.search(body)
        assert value is not None, f"{name} has no :value: (its default)"
        description = _VALUE.sub("", body).strip()
        settings[name] = (value.group(1).strip(), description)
    return settings


def test_every_configuration_key_is_documented_with_its_default() -> None:
    documented = documented_settings()
    missing = sorted(set(CONFIG_DEFAULTS) - set(documented))
    assert not missing, f"document these keys in docs/configuration.rst: {missing}"
    unknown = sorted(set(documented) - set(CONFIG_DEFAULTS))
    assert not unknown, f"docs/configuration.rst documents keys the code lacks: {unknown}"
    for name, (written, description) in documented.items():
        assert ast.literal_eval(written) == CONFIG_DEFAULTS[name], (
            f"{name}: documented default {written}, code has {CONFIG_DEFAULTS[name]!r}"
        )
        assert len(description.split()) >= 8, f"{name} needs a description"


def test_the_check_above_sees_a_key_that_is_not_documented() -> None:
    """The parser finds the entries, so a new key really would fail the test above."""
    documented = documented_settings()
    assert len(documented) == len(CONFIG_DEFAULTS) >= 10
    assert "WEBSOCKET_NOT_A_REAL_KEY" not in documented


# ---------------------------------------------------------------------------
# Code on the pages


def _literal_blocks(text: str) -> List[Tuple[int, str, str]]:
    """(line, directive or "::", body) of each literal or code block of an rst page."""
    lines = text.splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        kind = None
        if re.match(r"\.\. (code-block|code|sourcecode)::", stripped):
            kind = stripped
        elif stripped.endswith("::") and not stripped.startswith(".."):
            kind = "::"
        if kind is None:
            index += 1
            continue
        indent = len(line) - len(line.lstrip())
        start = index + 1  # 1-based
        index += 1
        while index < len(lines) and lines[index].strip().startswith(":"):
            index += 1  # directive options
        body: List[str] = []
        while index < len(lines) and (
            not lines[index].strip() or len(lines[index]) - len(lines[index].lstrip()) > indent
        ):
            body.append(lines[index])
            index += 1
        blocks.append((start, kind, "\n".join(body)))
    return blocks


def _looks_like_python(body: str) -> bool:
    """Python with at least one statement that is more than an expression.

    ``scripts/test.sh`` parses as an expression (a division): it is not
    counted; ``import x``, ``def f():`` and ``x = 1`` are.
    """
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(body))
    except SyntaxError:
        return False
    return any(not isinstance(node, ast.Expr) for node in tree.body)


def test_python_on_the_pages_comes_from_files_that_tests_run() -> None:
    offenders = []
    for page in sorted(DOCS.glob("*.rst")):
        for line, kind, body in _literal_blocks(page.read_text()):
            no_language = not re.search(r"::\s*\S", kind)
            if "python" in kind or (no_language and _looks_like_python(body)):
                offenders.append(f"{page.name}:{line}: {kind}")
    assert not offenders, (
        "put these examples in docs/examples/ (run by a test) and literalinclude them: "
        + ", ".join(offenders)
    )


def test_the_python_detector_tells_code_from_commands() -> None:
    assert _looks_like_python("    import flask\n")
    assert _looks_like_python("    @websocket.route('/x')\n    def x(ws):\n        pass\n")
    assert _looks_like_python("    app.config['X'] = 1\n")
    assert not _looks_like_python("    scripts/test.sh\n")
    assert not _looks_like_python("    pip install Flask-WebSocket\n")
    assert not _looks_like_python("    uwsgi --http :8080 --http-websockets --gevent 1000\n")
    blocks = _literal_blocks("Text::\n\n    import os\n\nMore text.\n")
    assert blocks == [(1, "::", "\n    import os\n")]  # (1-based line of the "::")


def test_every_example_file_is_run_by_a_test() -> None:
    tests_text = "\n".join(
        path.read_text() for path in [*TESTS.rglob("*.py"), *EXAMPLES.glob("test_*.py")]
    )
    unrun = []
    for example in sorted(EXAMPLES.iterdir()):
        if example.name.startswith("test_") or example.suffix not in (".py", ".console", ".env"):
            continue
        module = f"docs.examples.{example.stem}"
        if module not in tests_text and example.name not in tests_text:
            unrun.append(example.name)
    assert not unrun, f"no test runs {unrun}"


def test_every_example_file_is_on_a_page() -> None:
    pages = "\n".join(page.read_text() for page in DOCS.glob("*.rst"))
    shown = set(re.findall(r"literalinclude:: examples/(\S+)", pages))
    files = {
        path.name
        for path in EXAMPLES.iterdir()
        if path.suffix in (".py", ".console", ".env") and not path.name.startswith("_")
    }
    assert files - shown == set(), f"examples no page shows: {sorted(files - shown)}"


# ---------------------------------------------------------------------------
# Code in the docstrings the API page shows


def _docstring_snippets(docstring: str) -> List[str]:
    """The ``::`` literal blocks of a docstring that are Python code."""
    import inspect

    text = inspect.cleandoc(docstring)
    return [body for _, kind, body in _literal_blocks(text) if kind == "::" and _parses(body)]


def _parses(body: str) -> bool:
    import textwrap

    try:
        ast.parse(textwrap.dedent(body))
    except SyntaxError:
        return False
    return True


def _api_page_docstrings() -> Dict[str, str]:
    """Docstrings with code of the modules and classes docs/api.rst documents."""
    import flask_websocket
    from flask_websocket import emitter, testing

    objects: Dict[str, object] = {
        "flask_websocket": flask_websocket,
        "flask_websocket.testing": testing,
        "flask_websocket.emitter": emitter,
    }
    for name in flask_websocket.__all__:
        objects[f"flask_websocket.{name}"] = getattr(flask_websocket, name)
    objects["flask_websocket.emitter.RedisEmitter"] = emitter.RedisEmitter
    objects["flask_websocket.testing.WebSocketTestClient"] = testing.WebSocketTestClient
    return {
        name: obj.__doc__
        for name, obj in objects.items()
        if isinstance(getattr(obj, "__doc__", None), str) and "::" in obj.__doc__
    }


def _echo(ws: Any) -> None:
    for message in ws:
        ws.send(message)


def test_code_in_the_api_docstrings_runs() -> None:
    """Each snippet runs; an app it makes echoes; a test function it defines passes.

    The emitter's snippet needs a Redis server: it is only parsed here (the
    emitter's own tests run it against a real one).
    """
    import textwrap

    from flask import Flask

    from flask_websocket import WebSocket
    from flask_websocket.testing import WebSocketTestClient

    ran = []
    for name, docstring in sorted(_api_page_docstrings().items()):
        for snippet in _docstring_snippets(docstring):
            code = textwrap.dedent(snippet)
            if "RedisEmitter(" in code:
                continue  # parsed by _docstring_snippets; needs Redis to run
            # The page's context: the imports, and for a fragment the app it
            # uses (with an echo route unless the fragment makes one).
            namespace: Dict[str, object] = {
                "__name__": f"snippet_{len(ran)}",
                "Flask": Flask,
                "WebSocket": WebSocket,
            }
            if "WebSocket(app)" not in code:
                app = Flask(f"snippet_{len(ran)}")
                websocket = WebSocket(app)
                if 'route("/echo")' not in code:
                    websocket.route("/echo")(_echo)
                namespace.update(app=app, websocket=websocket)
            exec(compile(code, f"<docstring of {name}>", "exec"), namespace)
            made = namespace.get("app")
            assert isinstance(made, Flask), name
            tests = [value for key, value in namespace.items() if key.startswith("test_")]
            for test in tests:
                test()  # type: ignore[operator]
            if not tests:
                with WebSocketTestClient(made).connect("/echo") as ws:
                    ws.send("echo?")
                    assert ws.receive() == "echo?", name
            ran.append(name)
    assert len(ran) >= 4, ran  # the package, WebSocket, WebSocketConnection, testing
