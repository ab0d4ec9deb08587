"""Sphinx configuration of the Flask-WebSocket site.

Build it with ``scripts/docs.sh`` (HTML into ``docs/_build/html``, warnings
are errors); ``scripts/test.sh`` runs the same build. It never uses the
network: intersphinx reads inventories that Debian's documentation packages
install (``scripts/bootstrap.sh`` installs them), and leaves out any that
are missing instead of downloading it.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, Optional, Tuple

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
# This checkout's code, whatever else is installed: autodoc documents it.
sys.path.insert(0, ROOT)

import flask_websocket  # noqa: E402

project = "Flask-WebSocket"
author = "the Flask-WebSocket authors"
copyright = "2026, the Flask-WebSocket authors"
version = release = flask_websocket.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the docstrings' "Args:" / "Raises:" sections
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "myst_parser",  # the maintainers' notes are Markdown
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "examples", "_static"]
nitpicky = True
# Names in signatures and docstrings that are not on this site and have no
# inventory here: internal helpers shown in type hints, and typing aliases.
nitpick_ignore_regex = [
    ("py:class", r"flask_websocket\.extension\.[HL]"),  # decorators' type variables
    ("py:.*", r"flask_websocket\.(protocol|concurrency|rooms|transport|hubs\.base)\..*"),
    ("py:.*", r"(Message|Backend|RoomRegistry|Envelope|ServerProtocol|ConnectionOptions)"),
    ("py:.*", r"(.*\.)?(H|_T|Handler|StartResponse)"),
    ("py:.*", r"(.*\.)?_[A-Za-z].*"),  # private helpers in signatures
    ("py:.*", r"redis\..*"),
    ("py:.*", r"websockets\..*"),  # the Python client's connection: no inventory here
    ("py:.*", r"socket\.socket|_socket\.socket"),
]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_type_aliases = {"Flask": "flask.Flask"}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

myst_heading_anchors = 3

# -- intersphinx, offline ----------------------------------------------------
#
# Each project's inventory from the Debian package that ships its HTML
# documentation (python3-doc, python-flask-doc, python-werkzeug-doc), linked
# to the project's own site. A missing package drops that project's links;
# nothing is ever fetched.
_INVENTORIES: Dict[str, Tuple[str, str]] = {
    "python": ("https://docs.python.org/3/", "/usr/share/doc/python3/html/objects.inv"),
    "flask": (
        "https://flask.palletsprojects.com/en/stable/",
        "/usr/share/doc/python-flask-doc/html/objects.inv",
    ),
    "werkzeug": (
        "https://werkzeug.palletsprojects.com/en/stable/",
        "/usr/share/doc/python-werkzeug-doc/html/objects.inv",
    ),
}
intersphinx_mapping: Dict[str, Tuple[str, Optional[str]]] = {}
for _name, (_url, _path) in _INVENTORIES.items():
    if os.path.isfile(_path):
        intersphinx_mapping[_name] = (_url, _path)
    else:  # no links into that project: do not report its names as broken
        nitpick_ignore_regex.append(("py:.*", r".*" if _name == "python" else _name + r"\..*"))

# -- HTML ----------------------------------------------------------------------

html_theme = "furo"
html_title = f"Flask-WebSocket {release}"
html_static_path: list = []
html_show_sourcelink = False


# -- references that follow the API as it moves --------------------------------
#
# Docstrings name objects by the path users import them from
# (``flask_websocket.SendQueueFull``) while this site may document them under
# the module that defines them (``flask_websocket.exceptions.SendQueueFull``),
# or the other way round. A ``flask_websocket...`` reference that finds no
# target resolves to the one documented object with the same last name. And a
# bare ``Flask`` (a string annotation in a class signature) links to Flask's.


def _resolve_by_last_name(app, env, node, contnode):  # type: ignore[no-untyped-def]
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if "." not in target and "flask" in intersphinx_mapping:
        # A bare "Flask" from a class signature's string annotation.
        import flask
        from sphinx.ext import intersphinx

        if not hasattr(flask, target):
            return None
        qualified = node.deepcopy()
        qualified["reftarget"] = "flask." + target
        return intersphinx.missing_reference(app, env, qualified, contnode)
    if not target.startswith("flask_websocket."):
        return None
    domain = env.get_domain("py")
    last = "." + target.rsplit(".", 1)[-1]
    found = sorted(
        name
        for name in domain.objects
        if name.startswith("flask_websocket.") and name.endswith(last) and name != target
    )
    if len(found) != 1:
        return None
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], found[0], node, contnode
    )


def setup(app):  # type: ignore[no-untyped-def]
    app.connect("missing-reference", _resolve_by_last_name)
