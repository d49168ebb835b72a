"""The ``/twilio`` WebSocket and ``/twilio/voice`` webhook: Twilio's wire format on aiohttp.

The wire format itself is :mod:`server.transports.twilio`; this module only
moves its messages over a socket and joins them to a :class:`server.call.Call`.
Outbound frames are written straight to the socket (:mod:`server.wsdirect`),
so a slow or stalled peer never blocks the media clock: past a bounded write
buffer its frames are dropped and counted, and a peer stalled for seconds is
disconnected.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from server.call import Call
from server.transport import CallStarted, Hangup
from server.transports import twilio
from server.wsdirect import DirectTextSender

if TYPE_CHECKING:
    from server.app import CallRegistry

log = logging.getLogger(__name__)


class TwilioSocketTransport:
    """:class:`server.transport.Transport` over one Twilio Media Streams WebSocket.

    Outbound messages are written at once by a :class:`DirectTextSender`; a
    peer that stops reading loses frames (counted) and is disconnected after a
    while, and never blocks the media clock.
    """

    def __init__(
        self, ws: web.WebSocketResponse, stream: twilio.TwilioStream, sender: DirectTextSender
    ) -> None:
        self._ws = ws
        self._stream = stream
        self._sender = sender
        self._loop = asyncio.get_running_loop()

    @property
    def dropped(self) -> int:
        return self._sender.dropped

    def _put(self, message: str | None) -> None:
        if message is not None:
            self._sender.send(message, self._loop.time())

    def send_audio(self, frame: bytes) -> None:
        self._put(self._stream.media_message(frame))

    def clear(self) -> None:
        self._put(self._stream.clear_message())

    def mark(self, name: str) -> None:
        if self._stream.can_send:
            self._put(self._stream.mark_message(name))

    def send_dtmf(self, digits: str) -> bool:
        return False  # Media Streams carry no keys toward the caller

    def hangup(self) -> None:
        """Close the socket (Twilio then runs the TwiML after ``<Connect>``); idempotent."""
        if not self._sender.closed:
            self._sender.stop()
            self._loop.create_task(self._ws.close())

    def stop(self) -> None:
        """Stop sending; the handler closes the WebSocket."""
        self._sender.stop()


def public_ws_url(request: web.Request, public_url: str | None) -> str:
    """The exact ``wss://`` URL Twilio was given for ``/twilio`` (what it signs)."""
    base = public_url.rstrip("/") if public_url else f"https://{request.host}"
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return base + request.rel_url.path


def stream_url(request: web.Request, public_url: str | None) -> str:
    """The ``wss://`` URL of ``/twilio`` to put in TwiML (Twilio accepts only wss)."""
    base = public_url.rstrip("/") if public_url else f"https://{request.host}"
    return "wss://" + base.partition("://")[2] + "/twilio"


def public_http_url(request: web.Request, public_url: str | None) -> str:
    """The exact URL Twilio posted the webhook to (what it signs)."""
    base = public_url.rstrip("/") if public_url else f"{request.scheme}://{request.host}"
    return base + str(request.rel_url)


def _require_signature(
    request: web.Request, registry: CallRegistry, url: str, params: dict[str, str] | None
) -> None:
    """Refuse with 403 unless X-Twilio-Signature signs ``url`` (+ ``params``), when required."""
    token = registry.config.twilio.auth_token
    if token is None:
        return
    signature = request.headers.get("X-Twilio-Signature", "")
    if not twilio.validate_signature(token, url, params, signature):
        registry.metrics.refused_calls.labels("bad_signature").inc()
        log.warning(
            "%s %s refused: bad X-Twilio-Signature for %s", request.method, request.path, url
        )
        raise web.HTTPForbidden(text="bad signature")


async def voice_webhook(request: web.Request) -> web.Response:
    """``POST /twilio/voice``: answer an incoming call with ``<Connect><Stream>``."""
    registry: CallRegistry = request.app["registry"]
    config = registry.config
    params = {k: str(v) for k, v in (await request.post()).items()}
    _require_signature(
        request, registry, public_http_url(request, config.server.public_url), params
    )
    ws_url = stream_url(request, config.server.public_url)
    parameters: dict[str, str] = {k: params[k] for k in ("CallSid", "From", "To") if k in params}
    body = twilio.twiml_connect_stream(ws_url, parameters)
    return web.Response(text=body, content_type="application/xml")


async def media_stream(request: web.Request) -> web.StreamResponse:
    """``GET /twilio``: one bidirectional Media Stream, i.e. one call."""
    registry: CallRegistry = request.app["registry"]
    config = registry.config
    _require_signature(request, registry, public_ws_url(request, config.server.public_url), None)
    refusal = registry.refusal()
    if refusal is not None:
        registry.metrics.refused_calls.labels(refusal).inc()
        raise web.HTTPServiceUnavailable(text=refusal)

    # No permessage-deflate: outbound frames are written uncompressed by wsdirect.
    ws = web.WebSocketResponse(
        max_msg_size=twilio.MAX_MESSAGE_BYTES + 1024, autoping=True, compress=False
    )
    await ws.prepare(request)
    if request.transport is None:
        return ws
    stream = twilio.TwilioStream(bidirectional=True)
    sender = DirectTextSender(request.transport)
    transport = TwilioSocketTransport(ws, stream, sender)
    call: Call | None = None
    reason = "closed"
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                result = stream.receive(message.data)
            elif message.type == WSMsgType.BINARY:
                registry.metrics.bad_messages.labels("twilio").inc()
                log.warning("call %s: binary frame on a text-only protocol", stream.call_sid)
                await ws.close(code=1003, message=b"text frames only")
                reason = "protocol_error"
                break
            else:
                break
            if result is None:
                continue
            if isinstance(result, twilio.StreamFault):
                registry.metrics.bad_messages.labels("twilio").inc()
                log.warning("call %s: %s", stream.call_sid or "-", result.reason)
                if result.close_code is not None:
                    await ws.close(code=result.close_code, message=result.reason.encode()[:120])
                    reason = "protocol_error"
                    break
                continue
            if isinstance(result, CallStarted):
                sender.label = result.call_id
                call = registry.open_call(result.call_id, transport)
            if call is not None:
                call.on_event(result)
            if isinstance(result, Hangup):
                reason = result.reason
                break
    finally:
        if call is not None:
            call.end(reason)
            registry.remove(call, "twilio", reason)
        registry.metrics.dropped_frames.inc(transport.dropped)
        counters = stream.counters
        for outcome, count in (
            ("played", counters.marks_played),
            ("cleared", counters.marks_cleared),
            ("unknown", counters.marks_unknown),
        ):
            if count:
                registry.metrics.marks.labels("twilio", outcome).inc(count)
        transport.stop()
        if not ws.closed:
            await ws.close()
    return ws
