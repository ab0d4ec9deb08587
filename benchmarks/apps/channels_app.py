"""Django Channels peer: consumers on Daphne, in-memory or Redis channel layer.

Production configuration: Channels' docs install it as ``channels[daphne]``
and deploy with Daphne ("Deploying": ``daphne myproject.asgi:application``;
under a process manager, ``daphne --fd N`` on a socket passed down, which is
how peers.py starts it, one process per worker). The channel layer is
``InMemoryChannelLayer`` with its defaults on one worker, and
``channels_redis.core.RedisChannelLayer`` when ``BENCH_REDIS_URL`` is set
(two workers; Channels' docs name Redis the layer for production). Django
settings are made here (``settings.configure``), with only what Channels
needs; no auth middleware (no peer here checks anything).

Consumers (``AsyncWebsocketConsumer``): ``/echo`` sends each message back
(text as text, bytes as bytes); ``/sub`` joins group ``"bench"`` and says
``"joined <pid>"``; ``/pub`` says ``"ready <pid>"``, then ``group_send``\\ s
every message to the group and answers ``"done <seq> <monotonic ns>"``.
"""

from __future__ import annotations

import os

import django
from django.conf import settings

from benchmarks.apps import _peer

_REDIS = os.environ.get("BENCH_REDIS_URL")
settings.configure(
    DEBUG=False,
    SECRET_KEY="benchmark-only",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    INSTALLED_APPS=["channels"],
    CHANNEL_LAYERS={
        "default": (
            {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [_REDIS]}}
            if _REDIS
            else {"BACKEND": "channels.layers.InMemoryChannelLayer"}
        )
    },
)
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


class Echo(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)


class Sub(AsyncWebsocketConsumer):
    async def connect(self):
        await self.channel_layer.group_add(_peer.ROOM, self.channel_name)
        await self.accept()
        await self.send(text_data=_peer.joined())

    async def disconnect(self, code):
        await self.channel_layer.group_discard(_peer.ROOM, self.channel_name)

    async def bench_message(self, event):
        await self.send(text_data=event["text"])


class Pub(AsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()
        await self.send(text_data=_peer.ready())

    async def receive(self, text_data=None, bytes_data=None):
        await self.channel_layer.group_send(
            _peer.ROOM, {"type": "bench.message", "text": text_data}
        )
        await self.send(text_data=_peer.done(text_data))


application = ProtocolTypeRouter(
    {
        "websocket": URLRouter(
            [
                path("echo", Echo.as_asgi()),
                path("sub", Sub.as_asgi()),
                path("pub", Pub.as_asgi()),
            ]
        )
    }
)
