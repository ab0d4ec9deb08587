"""A bystander: a real WebSocket client that must get an echo every 100 ms.

Run as a process of its own (so that the load a test makes in its own
process cannot delay it)::

    python -m tests.bystander ws://127.0.0.1:PORT/echo [--interval 0.1] [--miss 1.0]

It connects, prints ``ready``, then sends a numbered text message every
``--interval`` seconds and waits for its echo. A gap of more than ``--miss``
seconds between two echoes is a *miss*; a wrong echo or a closed connection
is an *error*. It stops when its standard input closes (or a line arrives),
or after ``--max-seconds`` (bounded), and prints one JSON line: beats, misses
(each gap in seconds), the longest gap and the errors.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any, Dict, List

from websockets.sync.client import connect


def watch_stdin(stop: threading.Event) -> None:
    sys.stdin.readline()  # a line or EOF: the test is done
    stop.set()


def run(url: str, interval: float, miss: float, max_seconds: float) -> Dict[str, Any]:
    stop = threading.Event()
    threading.Thread(target=watch_stdin, args=(stop,), daemon=True).start()
    beats = 0
    misses: List[float] = []
    errors: List[str] = []
    longest = 0.0
    with connect(url, open_timeout=10, close_timeout=5, ping_interval=None, proxy=None) as ws:
        print("ready", flush=True)
        started = last = time.monotonic()
        next_beat = started
        while not stop.is_set() and time.monotonic() - started < max_seconds:
            text = f"beat {beats}"
            try:
                ws.send(text)
                echo = ws.recv(timeout=30)
            except Exception as exc:  # reported: the test asserts there is none
                errors.append(f"beat {beats}: {type(exc).__name__}: {exc}")
                break
            now = time.monotonic()
            if echo != text:
                errors.append(f"beat {beats}: echo {echo!r}")
                break
            gap = now - last
            longest = max(longest, gap)
            if gap > miss:
                misses.append(round(gap, 3))
            last = now
            beats += 1
            next_beat += interval
            stop.wait(max(0.0, next_beat - time.monotonic()))
    return {"beats": beats, "misses": misses, "longest_gap": round(longest, 3), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--miss", type=float, default=1.0)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args()
    try:
        result = run(args.url, args.interval, args.miss, args.max_seconds)
    except Exception as exc:
        result = {"beats": 0, "misses": [], "longest_gap": 0.0, "errors": [repr(exc)]}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
