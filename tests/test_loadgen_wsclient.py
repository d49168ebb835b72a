"""The load generator's WebSocket client against aiohttp's server, on loopback."""

from __future__ import annotations

import asyncio

from aiohttp import WSMsgType, web
from aiohttp.pytest_plugin import AiohttpServer

from server.loadgen.wsclient import (
    CLOSE_NORMAL,
    WebSocketClient,
    accept_key,
    mask_payload,
    open_connection,
)


class Recorder:
    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()
        self.texts: list[str] = []
        self.close_code: int | None = None

    def on_open(self) -> None:
        self.opened.set()

    def on_text(self, text: str) -> None:
        self.texts.append(text)

    def on_close(self, code: int, reason: str) -> None:
        self.close_code = code
        self.closed.set()


async def echo_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type != WSMsgType.TEXT:
            break
        if message.data == "ping-me":
            await ws.ping(b"p")
            await ws.send_str("pinged")
        elif message.data == "bye":
            await ws.close(code=4000, message=b"bye")
        else:
            await ws.send_str(message.data.upper())
    return ws


async def refuse_handler(request: web.Request) -> web.Response:
    return web.Response(status=503, text="full")


async def start(aiohttp_server: AiohttpServer) -> str:
    app = web.Application()
    app.router.add_get("/ws", echo_handler)
    app.router.add_get("/full", refuse_handler)
    server = await aiohttp_server(app, host="127.0.0.1")
    return f"ws://127.0.0.1:{server.port}"


def test_accept_key_matches_rfc_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_masking_is_its_own_inverse() -> None:
    data = bytes(range(251))
    mask = b"\x01\x80\xff\x10"
    assert mask_payload(mask_payload(data, mask), mask) == data
    assert mask_payload(data, b"\x00" * 4) == data


async def test_text_round_trip_and_close(aiohttp_server: AiohttpServer) -> None:
    base = await start(aiohttp_server)
    rec = Recorder()
    client = WebSocketClient(f"{base}/ws", rec.on_open, rec.on_text, rec.on_close)
    await open_connection(client)
    await asyncio.wait_for(rec.opened.wait(), 5)
    long = "x" * 70_000  # a 64-bit length frame
    for text in ("hello", "é" * 200, long):
        client.send_text(text)
    client.send_text("ping-me")
    client.close(CLOSE_NORMAL)
    await asyncio.wait_for(rec.closed.wait(), 5)
    assert rec.texts == ["HELLO", "É" * 200, long.upper(), "pinged"]
    assert rec.close_code == CLOSE_NORMAL


async def test_server_initiated_close(aiohttp_server: AiohttpServer) -> None:
    base = await start(aiohttp_server)
    rec = Recorder()
    client = WebSocketClient(f"{base}/ws", rec.on_open, rec.on_text, rec.on_close)
    await open_connection(client)
    await asyncio.wait_for(rec.opened.wait(), 5)
    client.send_text("bye")
    await asyncio.wait_for(rec.closed.wait(), 5)
    assert rec.close_code == 4000
    assert not client.is_open


async def test_refused_upgrade_reports_the_status(aiohttp_server: AiohttpServer) -> None:
    base = await start(aiohttp_server)
    rec = Recorder()
    client = WebSocketClient(f"{base}/full", rec.on_open, rec.on_text, rec.on_close)
    await open_connection(client)
    await asyncio.wait_for(rec.closed.wait(), 5)
    assert not rec.opened.is_set()
    assert rec.close_code == 503
