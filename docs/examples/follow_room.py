"""Follow a room of the chat example from Python: each message once, in order, across drops.

Run it while the chat is running (``flask --app examples.chat websocket run``)::

    python docs/examples/follow_room.py "ws://127.0.0.1:8080/ws/lobby?nick=bot"

Stop it with Ctrl-C, or give ``--count N`` to stop after N messages. Cut
the network, reload the server (``kill -HUP`` its master) or kill its
worker: it comes back by itself and prints what was said meanwhile.
"""

import argparse
import asyncio
import json

from flask_websocket.client import RecoveryIncomplete, ResumingClient


def say_what_is_missing(event: RecoveryIncomplete) -> None:
    # History no longer reached back far enough (or Redis lost the room's
    # stream): an app would reload its state here.
    print(f"-- some messages of {event.room} may be missing ({event.reason})", flush=True)


async def follow(url: str, count: int) -> None:
    async with ResumingClient(url, on_recovery_incomplete=say_what_is_missing) as client:
        printed = 0
        async for message in client:  # ends if the server closes with 1000
            event = json.loads(message.data)
            if event["type"] != "message":
                continue  # welcome, join, leave...: presence, not history
            print(f"{event['from']}: {event['text']}", flush=True)
            printed += 1
            if printed == count:
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the chat room's WebSocket URL, with ?nick=...")
    parser.add_argument("--count", type=int, default=0, help="stop after this many messages")
    arguments = parser.parse_args()
    asyncio.run(follow(arguments.url, arguments.count))


if __name__ == "__main__":
    main()
