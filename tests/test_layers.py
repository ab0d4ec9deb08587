"""The package's layers, as docs/design.md draws them: which module may import which.

Read from the source (every ``import`` and ``from ... import``, at any depth
of the module, ``TYPE_CHECKING`` blocks excepted: they cost nothing at run
time), so a new import that crosses a layer fails here, and the picture in
docs/design.md cannot drift from the code.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "flask_websocket"

#: Third-party or standard modules only the concurrency layer may import.
CONCURRENCY_ONLY = {"gevent", "greenlet", "threading", "asyncio"}
#: What the client side may import of those: ``client`` is the Python client
#: (on websockets' asyncio client) that services and scripts run; it never
#: runs inside uWSGI, and nothing of the server imports it.
CLIENT_SIDE = {"client": {"asyncio"}}

#: What each of the package's modules may import from the package. A module
#: not listed may import nothing of it. "concurrency" stands for the package
#: and all its modules, "hubs" likewise.
ALLOWED: Dict[str, Set[str]] = {
    "close_codes": set(),
    "logs": set(),
    "history": set(),
    "wire": {"history"},
    "streams": {"concurrency", "fanout", "history", "hubs", "protocol", "wire"},
    "sqlite_history": {"concurrency", "exceptions", "history"},
    "origins": {"logs"},
    "admission": {"logs", "concurrency"},
    "drain": {"close_codes", "concurrency", "hubs"},
    "exceptions": {"close_codes"},
    "config": {"compression", "exceptions", "connection", "sendqueue"},
    "compression": {"protocol"},
    "transport": {"exceptions", "close_codes"},
    "concurrency": {"concurrency", "transport", "exceptions"},
    "protocol": {"close_codes", "exceptions", "_websockets_internals"},
    "_websockets_internals": set(),
    "sendqueue": {"exceptions", "close_codes", "config"},
    "connection": {
        "close_codes",
        "compression",
        "concurrency",
        "exceptions",
        "protocol",
        "sendqueue",
        "transport",
        "keepalive",
        "history",
        "wire",
        "ratelimit",
    },
    "keepalive": {"close_codes", "concurrency", "exceptions", "protocol"},
    "ratelimit": {"logs"},
    "fanout": {"exceptions"},
    "rooms": {"fanout", "history", "hubs", "protocol", "streams", "wire"},
    "hubs": {
        "hubs",
        "concurrency",
        "config",
        "exceptions",
        "history",
        "logs",
        "sqlite_history",
        "transport",
    },
    "emitter": {"exceptions", "hubs", "protocol"},
    "cli": set(),
    "wsgi": set(),
    # The client side (see CLIENT_SIDE): the wire format, and the exceptions.
    "client": {"exceptions", "history", "wire"},
    "testing": {"close_codes", "concurrency", "exceptions", "protocol", "transport"},
    "extension": {
        "cli",
        "close_codes",
        "compression",
        "concurrency",
        "config",
        "connection",
        "exceptions",
        "admission",
        "drain",
        "history",
        "hubs",
        "origins",
        "protocol",
        "rooms",
        "transport",
        "wire",
    },
    "__init__": {"close_codes", "connection", "exceptions", "extension", "hubs"},
}


def layer_of(module: str) -> str:
    """``hubs.local`` -> ``hubs``; ``concurrency.gevent`` -> ``concurrency``."""
    return module.split(".")[0]


def modules() -> Iterator[Tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        yield ".".join(parts), path


def _type_checking_nodes(tree: ast.AST) -> Set[int]:
    skipped: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                skipped.add(id(child))
    return skipped


def imports_of(name: str, path: Path) -> Tuple[Set[str], Set[str]]:
    """(modules of the package, other top-level modules) that ``path`` imports."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    ours: Set[str] = set()
    others: Set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("flask_websocket."):
                    ours.add(alias.name.split(".", 1)[1])
                else:
                    others.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                module = node.module or ""
                if module.startswith("flask_websocket"):
                    ours.add(module.split(".", 1)[1] if "." in module else "__init__")
                else:
                    others.add(module.split(".")[0])
                continue
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = ".".join([*base, node.module] if node.module else base)
            if target:
                ours.add(target)
            else:  # "from . import transport"
                ours.update(alias.name for alias in node.names)
    return ours, others


@pytest.mark.parametrize(("name", "path"), list(modules()), ids=[n for n, _ in modules()])
def test_each_module_imports_only_from_the_layers_below(name: str, path: Path) -> None:
    ours, others = imports_of(name, path)
    layer = layer_of(name) if name != "__init__" else "__init__"
    allowed = ALLOWED.get(layer, set()) | {layer}
    crossing = sorted(module for module in ours if layer_of(module) not in allowed)
    assert crossing == [], f"{name} imports {crossing}: not allowed by docs/design.md's layers"
    if layer != "concurrency":
        loops = sorted(others & CONCURRENCY_ONLY - CLIENT_SIDE.get(layer, set()))
        assert loops == [], f"{name} imports {loops}: only flask_websocket/concurrency/ may"


def test_the_rules_cover_every_module() -> None:
    layers = {layer_of(name) for name, _ in modules()}
    assert layers - set(ALLOWED) == set(), "add the new module to ALLOWED and to docs/design.md"


def test_nothing_of_the_server_imports_the_client() -> None:
    importers = [name for name, path in modules() if "client" in imports_of(name, path)[0]]
    assert importers == [], "the server must not pay for the client's asyncio websockets client"
