"""Flask-WebSocket echo server for the benchmarks.

Re-exports the application object of ``examples/echo.py`` (route ``/echo``).
uWSGI must be started with the repository root as working directory /
on ``PYTHONPATH`` so that ``examples.echo`` is importable.
"""

from examples.echo import app

__all__ = ["app"]
