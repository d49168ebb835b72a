"""A SIP call joined to the call model: offer/answer, its RTP session and its Call.

:class:`SipCall` is the :class:`server.sip.ua.InviteSession` the user agent
drives for each INVITE, and the :class:`server.transport.Transport` its
:class:`server.call.Call` sends through.  The RTP session is ticked by the
media clock around the calls' own tick (:class:`SipMedia` is the registry's
ticker): inbound audio leaves the jitter buffer, the call runs, and a tick
without outbound audio sends silence so the stream never pauses.

The agent answering is chosen by the Request-URI's user part (``[sip] routes``,
default ``agent.name``).

Calls we place may get early media: the SDP answer of a 18x starts the RTP
session (ringback and carrier prompts arrive, our side sends silence, which
also opens NAT pinholes) but not the call: the agent starts with the 2xx,
whose answer replaces the early one where it differs.  No RTP during early
media is no reason to hang up (the media timeout counts from the 2xx); a
failure final ends the session and frees its ports like any other end.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from server.agents.loopback import LoopbackAgent
from server.call import AgentFactory, Call
from server.config import SipSection
from server.rtp.dtmf import DtmfError
from server.rtp.portpool import PortPair, PortPool, PortsExhausted
from server.rtp.session import RtpSession
from server.sdp import SdpError, parse_sdp
from server.sip.message import Request
from server.sip.offeranswer import Negotiated, Negotiation, OfferAnswerError
from server.sip.ua import CallControl, MediaRefused, Refused
from server.transport import CallStarted, Dtmf, Hangup, MarkPlayed, MediaStats

if TYPE_CHECKING:
    from server.app import CallRegistry

log = logging.getLogger(__name__)

TRANSPORT_LABEL: Final = "sip"


class SipMedia:
    """Every live SIP call's RTP session, ticked by the media clock."""

    def __init__(self) -> None:
        self.calls: set[SipCall] = set()

    def before_tick(self, media_ms: int) -> None:
        for call in list(self.calls):
            call.before_tick(media_ms)

    def after_tick(self) -> None:
        for call in list(self.calls):
            call.after_tick()


class SipCall:
    """One answered (or ringing) INVITE: see the module docstring."""

    def __init__(
        self,
        invite: Request,
        control: CallControl,
        *,
        registry: CallRegistry,
        config: SipSection,
        pool: PortPool,
        media: SipMedia,
        agent: AgentFactory | None,
    ) -> None:
        self.call_id = invite.call_id or secrets.token_hex(8)
        self._control = control
        self._registry = registry
        self._config = config
        self._pool = pool
        self._media = media
        self._agent = agent
        self._user = invite.request_uri().user or ""
        self._pair: PortPair | None = None
        self._negotiation: Negotiation | None = None
        self.rtp: RtpSession | None = None
        self.call: Call | None = None
        self.early_media_packets: int | None = None
        """Audio packets taken in before the 2xx of a call we placed (None: no early media)."""
        self._sent_this_tick = False
        self._ended = False
        self._loop = asyncio.get_running_loop()

    # -- InviteSession ----------------------------------------------------------------

    def _negotiate(self) -> Negotiation:
        """Take an RTP port pair and start our side of offer/answer."""
        try:
            self._pair = self._pool.acquire()
        except PortsExhausted as exc:
            raise MediaRefused(str(exc), 399) from None
        self._negotiation = Negotiation(
            local_ip=self._config.external_ip or self._config.host,
            rtp_port=self._pair.rtp_port,
            session_id=secrets.randbelow(2**31),
            preferences=self._config.codecs,
        )
        return self._negotiation

    def answer(self, offer: bytes | None) -> bytes:
        negotiation = self._negotiate()
        if offer is None:
            return negotiation.offer().serialize()
        try:
            answer = negotiation.answer(parse_sdp(offer))
        except (SdpError, OfferAnswerError) as exc:
            self._release()
            code = exc.warning_code if isinstance(exc, OfferAnswerError) else 399
            raise MediaRefused(str(exc), code) from None
        self._start_media(answer.media)
        self._open_call(answer.media)
        return answer.serialize()

    # -- OutboundSession (calls we place) -----------------------------------------------

    def offer(self) -> bytes:
        """The SDP offer of our INVITE."""
        return self._negotiate().offer().serialize()

    def early(self, answer: bytes) -> None:
        """The callee's answer in a 18x: early media, without the agent (see the module
        docstring).  Until the 2xx the media timeout does not run: the session is told
        the peer holds (RtpSession.update restarts the window when that changes)."""
        media = replace(self._accept_answer(answer), on_hold=True)
        if self.rtp is None:
            self._start_media(media)
            self.early_media_packets = 0
        else:
            self.rtp.update(media)

    def accept(self, answer: bytes) -> None:
        """The callee's answer (in its 2xx): media starts, or follows an answer that
        differs from the early one; then the call (and its agent) starts."""
        media = self._accept_answer(answer)
        if self.rtp is None:
            self._start_media(media)
        else:
            if self.early_media_packets is not None and self.call is None:
                self.early_media_packets = self.rtp.stats.audio_in
            self.rtp.update(media)
        self._open_call(media)

    def _accept_answer(self, answer: bytes) -> Negotiated:
        """The peer's answer to our offer, settled; :class:`MediaRefused` if unusable."""
        if self._negotiation is None or self._ended:
            raise MediaRefused("no offer pending", 399)
        try:
            return self._negotiation.accept(parse_sdp(answer))
        except (SdpError, OfferAnswerError) as exc:
            code = exc.warning_code if isinstance(exc, OfferAnswerError) else 399
            raise MediaRefused(str(exc), code) from None

    def confirmed(self, ack_body: bytes) -> None:
        if self._negotiation is None or self._ended:
            return
        if not ack_body:
            if self.rtp is None:  # our offer went in the 200 and the ACK did not answer it
                log.info("call %s: no SDP answer in the ACK: hanging up", self.call_id)
                self._control.hangup("no_answer_in_ack")
            return
        try:  # delayed offer: the answer to our offer is in the ACK
            media = self._negotiation.accept(parse_sdp(ack_body))
        except (SdpError, OfferAnswerError) as exc:
            log.info("call %s: unusable answer in the ACK (%s): hanging up", self.call_id, exc)
            self._control.hangup("bad_ack_sdp")
            return
        if self.rtp is None:
            self._start_media(media)
        else:
            self.rtp.update(media)
        self._open_call(media)

    def update(self, offer: bytes | None) -> bytes:
        negotiation = self._negotiation
        if negotiation is None:
            raise MediaRefused("no session to update", 399)
        if offer is None:
            return negotiation.offer().serialize()
        try:
            answer = negotiation.answer(parse_sdp(offer))
        except (SdpError, OfferAnswerError) as exc:
            code = exc.warning_code if isinstance(exc, OfferAnswerError) else 399
            raise MediaRefused(str(exc), code) from None
        if self.rtp is not None:
            self.rtp.update(answer.media)
        return answer.serialize()

    def ended(self, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        self._media.calls.discard(self)
        call = self.call
        if call is not None:
            call.on_event(Hangup(reason))
            self._registry.remove(call, TRANSPORT_LABEL, reason)
        if self.rtp is not None:
            rtp, self.rtp = self.rtp, None
            rtp.close(reason)  # RTCP BYE with the reason
        self._release()

    # -- media -----------------------------------------------------------------------

    def _start_media(self, media: Negotiated) -> None:
        """The RTP session on our port pair, ticked from now on."""
        pair = self._pair
        assert pair is not None
        self.rtp = RtpSession(
            pair,
            media,
            on_audio=self._on_audio,
            on_dtmf=self._on_dtmf,
            on_timeout=self._on_media_timeout,
            media_timeout_s=self._config.media_timeout_s,
            cname=f"voxgate@{self._config.host}",
            wait_for_peer=self._config.rtp_wait_for_peer,
        )
        self._loop.create_task(self.rtp.start())
        self._media.calls.add(self)

    def _open_call(self, media: Negotiated) -> None:
        """The call and its agent (once): the conversation starts."""
        if self.call is not None or self._ended:
            return
        self.call = self._registry.open_call(self.call_id, self, agent=self._agent)
        self.call.on_event(
            CallStarted(
                self.call_id,
                self.call_id,
                media.codec.name,
                media.codec.audio_rate_hz,
                {"transport": "sip", "user": self._user},
            )
        )

    def _release(self) -> None:
        if self._pair is not None:
            self._pool.release(self._pair)
            self._pair = None

    def before_tick(self, media_ms: int) -> None:
        self._sent_this_tick = False
        if self.rtp is not None:
            self.rtp.on_tick(media_ms)

    def after_tick(self) -> None:
        if self.rtp is not None and not self._sent_this_tick:
            self.rtp.end_tick()

    def _on_audio(self, ulaw: bytes) -> None:
        if self.call is not None:
            self.call.on_audio(ulaw)

    def _on_dtmf(self, digit: str) -> None:
        if self.call is not None:
            self.call.on_event(Dtmf(digit))

    def _on_media_timeout(self) -> None:
        log.info(
            "call %s: no RTP for %.0f s: hanging up", self.call_id, self._config.media_timeout_s
        )
        self._control.hangup("media_timeout")

    # -- Transport (the Call's outbound side) ----------------------------------------------

    def send_audio(self, frame: bytes) -> None:
        if self.rtp is not None:
            self._sent_this_tick = True
            self.rtp.send_frame(frame)

    def clear(self) -> None:
        if self.rtp is not None:
            self.rtp.clear()  # barge-in: frames not yet on the wire are dropped

    def mark(self, name: str) -> None:
        # Frames before the mark have been sent; it is reported after this tick.
        self._loop.call_soon(self._mark_played, name)

    def _mark_played(self, name: str) -> None:
        if self.call is not None and not self._ended:
            self.call.on_event(MarkPlayed(name, True))

    def send_dtmf(self, digits: str) -> bool:
        """RFC 4733 events on the call's RTP stream, if telephone-event was negotiated."""
        if self.rtp is None:
            return False
        try:
            self.rtp.send_digits(digits)
        except DtmfError as exc:
            log.info("call %s: cannot send DTMF %r: %s", self.call_id, digits, exc)
            return False
        return True

    def media_stats(self) -> MediaStats | None:
        """The RTP session's statistics (the optional transport hook); None before media."""
        return None if self.rtp is None else self.rtp.media_stats()

    def hangup(self) -> None:
        """The call hangs up: BYE, with the call's reason (``max_call``, ``idle``...)."""
        call = self.call
        self._control.hangup(call.end_reason if call and call.end_reason else "local")


def session_factory(
    registry: CallRegistry, config: SipSection, pool: PortPool, media: SipMedia
) -> Callable[[Request, CallControl], SipCall]:
    """The user agent's :data:`server.sip.ua.SessionFactory` for this server."""

    def make(invite: Request, control: CallControl) -> SipCall:
        refusal = registry.refusal()
        if refusal is not None:
            registry.metrics.refused_calls.labels(refusal).inc()
            # Full or draining: 503 with Retry-After sends the caller elsewhere (RFC 3261 §21.5.4).
            raise Refused(503, f"Service Unavailable ({refusal})", retry_after_s=5)
        user = invite.request_uri().user or ""
        name = config.routes.get(user, config.routes.get("*", registry.config.agent.name))
        return SipCall(
            invite,
            control,
            registry=registry,
            config=config,
            pool=pool,
            media=media,
            agent=agent_for(registry, name),
        )

    return make


def outbound_session_factory(
    registry: CallRegistry, config: SipSection, pool: PortPool, media: SipMedia
) -> Callable[[Request, CallControl], SipCall]:
    """Sessions for calls we place (``POST /calls``): answered by the default agent."""

    def make(invite: Request, control: CallControl) -> SipCall:
        name = config.routes.get("*", registry.config.agent.name)
        return SipCall(
            invite,
            control,
            registry=registry,
            config=config,
            pool=pool,
            media=media,
            agent=agent_for(registry, name),
        )

    return make


def agent_for(registry: CallRegistry, name: str) -> AgentFactory | None:
    """The agent factory for ``name``; ``None`` is the echo agent (the call's default)."""
    if name == "loopback":
        return LoopbackAgent
    if name == "echo":
        return None
    if registry.agent_factory is None or registry.config.agent.name != "pipeline":
        raise Refused(480, "the pipeline agent is not running")
    return registry.agent_factory
