"""A uWSGI entry module for apps Flask finds by itself (factories, ``--app mod``).

``flask websocket run`` points uWSGI here (``--module flask_websocket.wsgi:app``)
when the app is not a plain ``module:attribute``; the import path comes from
the ``FLASK_WEBSOCKET_APP`` environment variable and is resolved exactly as
``flask --app`` resolves it.
"""

from __future__ import annotations

import os

from flask.cli import ScriptInfo

app = ScriptInfo(app_import_path=os.environ.get("FLASK_WEBSOCKET_APP") or None).load_app()
