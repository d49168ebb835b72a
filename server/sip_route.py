"""The SIP front door's lifetime in the application: listeners, user agent, RTP ports.

``[sip] port`` 0 leaves SIP off.  Otherwise, at start-up the server binds SIP
on ``host:port`` (UDP and/or TCP) and takes RTP port pairs from ``rtp_ports``;
at shutdown every call gets a BYE before the listeners close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from server.calls_route import DIALER_KEY, Dialer
from server.rtp.portpool import PortPool
from server.sip.registration import start_registrations
from server.sip.sessiontimer import Policy
from server.sip.transport import SipTransport
from server.sip.ua import UserAgent
from server.transports.sip import SipMedia, outbound_session_factory, session_factory

if TYPE_CHECKING:
    from server.app import CallRegistry

log = logging.getLogger(__name__)

BYE_GRACE_S = 0.5
"""At shutdown, time for the BYEs to leave before the sockets close."""


def add_sip(app: web.Application, registry: CallRegistry) -> None:
    """Run the SIP front door for the life of ``app`` (its user agent in ``app["sip"]``)."""
    config = registry.config.sip
    if config.port == 0:
        return
    media = SipMedia()
    registry.tickers.append(media)

    async def context(app: web.Application) -> AsyncIterator[None]:
        low, high = config.rtp_port_range
        pool = PortPool(config.host, low, high)
        loop = asyncio.get_running_loop()
        transport = SipTransport(config.host, config.port, config.transports)
        await transport.start()
        advertised = config.external_ip or config.host
        ua = UserAgent(
            transport.send,
            loop,
            contact=f"sip:voxgate@{advertised}:{transport.port}",
            via_host=f"{advertised}:{transport.port}",
            sessions=session_factory(registry, config, pool, media),
            refusal=registry.refusal,
            answer_delay_ms=config.answer_delay_ms,
            timer_policy=Policy(config.session_expires_s, config.min_se_s),
        )
        transport.handler = ua.on_message
        registrations = await start_registrations(
            config.trunks, ua, transport.send, contact=ua.contact, via_sent_by=ua.via_host
        )
        app["sip_registrations"] = registrations
        app[DIALER_KEY] = Dialer(
            ua,
            config.trunks,
            outbound_session_factory(registry, config, pool, media),
            refusal=lambda: registry.refusal(extra=ua.outbound_pending),
            local_host=advertised,
        )
        app["sip"] = ua
        app["sip_transport"] = transport
        log.info(
            "SIP on %s:%d (%s), RTP ports %s",
            config.host,
            transport.port,
            "+".join(config.transports),
            config.rtp_ports,
        )
        yield
        for registration in registrations:
            registration.stop()  # Expires: 0
        ua.shutdown()  # BYE to answered calls, CANCEL to ringing ones we placed
        await asyncio.sleep(BYE_GRACE_S if ua.calls or media.calls or registrations else 0)
        await transport.close()

    app.cleanup_ctx.append(context)
