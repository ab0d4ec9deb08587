"""An echo server that can say where its memory goes (``benchmarks/idle_probe.py``).

``PROBE_TARGET`` picks the echo: ``raw`` (``raw_uwsgi_echo``) or
``flask-websocket`` (``examples/echo.py``). ``tracemalloc`` starts at import.
Two plain HTTP paths, answered in the worker:

* ``/_probe/mark``: collect garbage and remember the heap (a snapshot, the
  number of objects of each type);
* ``/_probe/report``: the same again, and what grew since the mark, as JSON:
  traced bytes, by file and by allocation site, objects by type, and the C
  stack greenlet saved for each suspended greenlet.

The probe adds no C stack frame to the connections it measures: the raw
echo is called from a plain function (Python 3.11 inlines the call), and
the Flask app gets its probe as an ordinary route.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import tracemalloc

tracemalloc.start(int(os.environ.get("PROBE_FRAMES", "12")))

import greenlet  # noqa: E402

TARGET = os.environ.get("PROBE_TARGET", "flask-websocket")
_mark: dict = {}


def _counts() -> collections.Counter:
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def _greenlet_stacks() -> list:
    me = greenlet.getcurrent()
    out = []
    for obj in gc.get_objects():
        if isinstance(obj, greenlet.greenlet) and obj is not me and obj and not obj.dead:
            frame = obj.gr_frame
            names = []
            while frame is not None and len(names) < 40:
                code = frame.f_code
                names.append(f"{os.path.basename(code.co_filename)}:{code.co_name}")
                frame = frame.f_back
            out.append({"saved": obj._stack_saved, "frames": names})
    return out


def mark() -> dict:
    gc.collect()
    _mark["snapshot"] = tracemalloc.take_snapshot()
    _mark["counts"] = _counts()
    _mark["greenlets"] = len(_greenlet_stacks())
    return {"traced": tracemalloc.get_traced_memory()[0]}


def report(limit: int = 40) -> dict:
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    before = _mark["snapshot"]
    stacks = _greenlet_stacks()
    counts = _counts()
    grown = {k: v - _mark["counts"].get(k, 0) for k, v in counts.items()}
    by_file = [
        {"file": str(s.traceback[0].filename), "size": s.size_diff, "count": s.count_diff}
        for s in snapshot.compare_to(before, "filename")[:limit]
    ]
    sites = snapshot.compare_to(before, "traceback")[:limit]
    sizes: dict = {s.traceback: collections.Counter() for s in sites}
    for trace in snapshot.traces:
        if trace.traceback in sizes:
            sizes[trace.traceback][trace.size] += 1
    by_site = [
        {
            "site": s.traceback.format(),
            "size": s.size_diff,
            "count": s.count_diff,
            "block_sizes": sizes[s.traceback].most_common(4),
        }
        for s in sites
    ]
    return {
        "target": TARGET,
        "traced_diff": sum(s.size_diff for s in snapshot.compare_to(before, "filename")),
        "by_file": by_file,
        "by_site": by_site,
        "objects": sorted(
            ((k, v) for k, v in grown.items() if v), key=lambda kv: -kv[1]
        )[:limit],
        "greenlets_before": _mark["greenlets"],
        "greenlets": stacks,
    }


def _answer(path: str) -> bytes:
    data = mark() if path.endswith("/mark") else report()
    return json.dumps(data).encode()


if TARGET == "raw":
    from benchmarks.apps.raw_uwsgi_echo import app as _raw

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_probe/"):
            start_response("200 OK", [("Content-Type", "application/json")])
            return [_answer(path)]
        return _raw(environ, start_response)

else:
    from flask import request

    from examples.echo import app

    @app.get("/_probe/<command>")
    def _probe(command: str) -> tuple:
        return _answer(request.path), 200, {"Content-Type": "application/json"}
