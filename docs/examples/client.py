"""Talk to the quickstart's echo from Python, with the websockets library.

Run it while the quickstart app is running::

    python docs/examples/client.py ws://127.0.0.1:8080/echo
"""

import sys

from websockets.sync.client import connect


def main(url):
    with connect(url) as ws:
        ws.send("Hello")
        print(ws.recv())  # Hello: text comes back as str
        ws.send(b"\x00\x01")
        print(ws.recv())  # b'\x00\x01': binary comes back as bytes


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8080/echo")
