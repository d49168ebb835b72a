"""Browser signalling on aiohttp: ``POST /webrtc/offer``, WHIP at ``/whip``, and the page.

* ``POST /webrtc/offer``: JSON ``{"sdp", "type": "offer"}`` -> 200 JSON
  ``{"sdp", "type": "answer", "call_id"}``.  An offer naming a ``call_id`` asks
  to renegotiate that call, which voxgate does not do: 400 with the reason.
* ``POST /whip``: ``application/sdp`` offer -> 201, the answer, and the call's
  resource in ``Location: /whip/{call_id}``; ``PATCH`` that resource with an
  ``application/trickle-ice-sdpfrag`` (RFC 8840) to trickle candidates, and
  ``DELETE`` it to hang up (also done by the page).
* ``GET /`` and ``/web/*``: the demo page (``server/web/``).

A bad offer gets 400 with the reason as its text body and leaves nothing
running; a full or draining server answers 503.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec
from aiohttp import web

from server.call import Call
from server.transports.webrtc import (
    IcePolicy,
    OfferError,
    WebRtcSession,
    WebRtcTransport,
    check_offer,
    install_ice_policy,
)

if TYPE_CHECKING:
    from server.app import CallRegistry

log = logging.getLogger(__name__)

WEB_DIR: Final = Path(__file__).parent / "web"
FINISHED_KEPT: Final = 1000
"""Ended call ids remembered, to tell "ended" from "unknown" in errors."""


class OfferBody(msgspec.Struct, forbid_unknown_fields=False):
    sdp: str
    type: str
    call_id: str | None = None


class WebRtcSessions:
    """The live browser calls of this process, by call id."""

    def __init__(self, registry: CallRegistry) -> None:
        self.registry = registry
        self.config = registry.config.webrtc
        self.policy = IcePolicy(self.config.ice_addresses)
        install_ice_policy(self.policy)
        self.live: dict[str, WebRtcSession] = {}
        self.finished: OrderedDict[str, str] = OrderedDict()
        self._connecting = 0

    async def open(self, offer_sdp: str) -> WebRtcSession:
        """Answer ``offer_sdp`` with a new call; raises OfferError or web.HTTPServiceUnavailable."""
        registry = self.registry
        check_offer(offer_sdp, self.config.max_offer_bytes)
        refusal = registry.refusal(extra=self._connecting)
        if refusal is not None:
            registry.metrics.refused_calls.labels(refusal).inc()
            raise web.HTTPServiceUnavailable(text=f"{refusal}\n")
        call_id = uuid.uuid4().hex
        session = WebRtcSession(call_id, self.config, self.policy, self._new_call, self._closed)
        self._connecting += 1
        try:
            await session.answer(offer_sdp)
        except BaseException:
            session.close("bad_offer")
            await session.done.wait()
            raise
        finally:
            self._connecting -= 1
        self.live[call_id] = session
        return session

    def _new_call(self, call_id: str, transport: WebRtcTransport) -> Call:
        return self.registry.open_call(call_id, transport)

    def _closed(self, session: WebRtcSession, reason: str) -> None:
        self.live.pop(session.call_id, None)
        self.finished[session.call_id] = reason
        while len(self.finished) > FINISHED_KEPT:
            self.finished.popitem(last=False)
        if session.call is not None:
            self.registry.remove(session.call, "webrtc", reason)

    def session(self, call_id: str) -> WebRtcSession:
        """The live session, or 404 saying whether it ended or never was."""
        session = self.live.get(call_id)
        if session is not None:
            return session
        if call_id in self.finished:
            raise web.HTTPNotFound(text=f"call {call_id} has ended ({self.finished[call_id]})\n")
        raise web.HTTPNotFound(text=f"no such call {call_id}\n")

    async def close_all(self) -> None:
        sessions = list(self.live.values())
        for session in sessions:
            session.close("shutdown")
        await asyncio.gather(*(s.done.wait() for s in sessions))


def _sessions(request: web.Request) -> WebRtcSessions:
    sessions: WebRtcSessions = request.app["webrtc"]
    return sessions


async def _read_body(request: web.Request, limit: int) -> str:
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise OfferError(f"body too large (more than {limit} bytes)")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise OfferError("body is not UTF-8 text") from None


def _bad(request: web.Request, reason: str) -> web.HTTPBadRequest:
    sessions = _sessions(request)
    sessions.registry.metrics.bad_messages.labels("webrtc").inc()
    log.info("%s %s refused: %s", request.method, request.path, reason)
    return web.HTTPBadRequest(text=reason + "\n")


async def offer(request: web.Request) -> web.Response:
    """``POST /webrtc/offer``: JSON offer in, JSON answer out."""
    sessions = _sessions(request)
    try:
        text = await _read_body(request, sessions.config.max_offer_bytes)
        try:
            body = msgspec.json.decode(text, type=OfferBody)
        except msgspec.DecodeError as exc:
            raise OfferError(f"body must be JSON {{sdp, type}}: {exc}") from None
        if body.type != "offer":
            raise OfferError(f"type must be 'offer', got {body.type!r}")
        if body.call_id is not None:
            state = "has ended" if body.call_id not in sessions.live else "is live"
            if body.call_id not in sessions.live and body.call_id not in sessions.finished:
                state = "is unknown"
            raise OfferError(
                f"call {body.call_id} {state}: voxgate does not renegotiate; "
                "send a new offer without call_id"
            )
        session = await sessions.open(body.sdp)
    except OfferError as exc:
        raise _bad(request, str(exc)) from None
    answer = {"sdp": session.pc.localDescription.sdp, "type": "answer", "call_id": session.call_id}
    return web.Response(body=msgspec.json.encode(answer), content_type="application/json")


async def whip_offer(request: web.Request) -> web.Response:
    """``POST /whip``: SDP offer in, 201 with the SDP answer and the call's resource."""
    sessions = _sessions(request)
    if request.content_type != "application/sdp":
        raise web.HTTPUnsupportedMediaType(text="WHIP offers are application/sdp\n")
    try:
        text = await _read_body(request, sessions.config.max_offer_bytes)
        session = await sessions.open(text)
    except OfferError as exc:
        raise _bad(request, str(exc)) from None
    return web.Response(
        status=201,
        text=session.pc.localDescription.sdp,
        content_type="application/sdp",
        headers={"Location": f"/whip/{session.call_id}", "ETag": f'"{session.call_id}"'},
    )


async def whip_patch(request: web.Request) -> web.Response:
    """``PATCH /whip/{call_id}``: trickled candidates (``application/trickle-ice-sdpfrag``)."""
    sessions = _sessions(request)
    session = sessions.session(request.match_info["call_id"])
    if request.content_type != "application/trickle-ice-sdpfrag":
        raise web.HTTPUnsupportedMediaType(text="PATCH takes application/trickle-ice-sdpfrag\n")
    try:
        text = await _read_body(request, sessions.config.max_offer_bytes)
        await session.add_candidates(text)
    except OfferError as exc:
        raise _bad(request, str(exc)) from None
    return web.Response(status=204)


async def whip_delete(request: web.Request) -> web.Response:
    """``DELETE /whip/{call_id}``: hang up."""
    session = _sessions(request).session(request.match_info["call_id"])
    session.close("remote_hangup")
    return web.Response(text="ended\n")


async def page(request: web.Request) -> web.FileResponse:
    """``GET /``: the demo page."""
    return web.FileResponse(WEB_DIR / "index.html")


def add_routes(app: web.Application, registry: CallRegistry) -> None:
    """Install the browser front door on ``app`` (its sessions live in ``app["webrtc"]``)."""
    sessions = WebRtcSessions(registry)
    app["webrtc"] = sessions
    app.router.add_get("/", page)
    app.router.add_static("/web/", WEB_DIR)
    app.router.add_post("/webrtc/offer", offer)
    app.router.add_post("/whip", whip_offer)
    app.router.add_patch("/whip/{call_id}", whip_patch)
    app.router.add_delete("/whip/{call_id}", whip_delete)

    async def close_sessions(app: web.Application) -> None:
        await sessions.close_all()

    app.on_shutdown.append(close_sessions)
