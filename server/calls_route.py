"""``POST /calls``: place an outbound SIP call.

Request body (JSON)::

    {"to": "+15551234567", "from": "voxgate", "trunk": "carrier"}

* ``to`` (required): with a trunk, a user part or number, sent to
  ``sip:<to>@<trunk domain>``; without one, a full ``sip:user@host[:port]`` URI
  that the INVITE goes to directly.  A full SIP URI is also taken with a trunk.
* ``from`` (optional): a user part (``sip:<from>@<trunk domain or our host>``) or
  a SIP URI; default the trunk's username, or ``voxgate``.
* ``trunk`` (optional): a ``[sip] trunks`` name; the INVITE then goes to its
  registrar with its credentials for 401/407.

Answers: ``201 {"call_id": "<SIP Call-ID>"}`` once the INVITE is sent (the call
then shows in ``GET /calls`` when answered); ``400`` with a reason for bad
input; ``404`` for an unknown trunk; ``503`` when SIP is off or calls are
refused (full, draining).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import msgspec
from aiohttp import web

from server.config import SipTrunk
from server.sip.message import SipParseError, SipUri
from server.sip.registration import resolve, trunk_addresses
from server.sip.transport import Peer
from server.sip.ua import MediaRefused, OutboundCall, OutboundSessionFactory, Refused, UserAgent
from server.sip.uac import Login

log = logging.getLogger(__name__)

DIALER_KEY = "sip_dialer"
"""Where the application keeps its :class:`Dialer` (absent: SIP is off)."""
MAX_BODY_BYTES = 4096


class CallRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    to: str
    from_: str | None = msgspec.field(default=None, name="from")
    trunk: str | None = None


class DialError(Exception):
    """A call that cannot be placed: ``status`` (400, 404, 503) and a reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Dialer:
    """Turns a :class:`CallRequest` into an INVITE through the user agent.

    ``sessions`` makes each call's :class:`~server.sip.ua.OutboundSession`;
    ``refusal()`` says why new calls are refused now (``None``: accepted);
    ``local_host`` is the host of ``from`` URIs without a trunk.
    """

    def __init__(
        self,
        ua: UserAgent,
        trunks: Iterable[SipTrunk],
        sessions: OutboundSessionFactory,
        *,
        refusal: Callable[[], str | None] = lambda: None,
        local_host: str = "127.0.0.1",
    ) -> None:
        self.ua = ua
        self.trunks = {trunk.name: trunk for trunk in trunks}
        self._sessions = sessions
        self._refusal = refusal
        self.local_host = local_host

    async def dial(self, request: CallRequest) -> OutboundCall:
        """Send the INVITE; raises :class:`DialError`."""
        refusal = self._refusal()
        if refusal is not None:
            raise DialError(503, f"not taking calls ({refusal})")
        trunk: SipTrunk | None = None
        if request.trunk is not None:
            trunk = self.trunks.get(request.trunk)
            if trunk is None:
                raise DialError(404, f"no trunk named {request.trunk[:40]!r}")
        destination: Peer | None = None
        login: Login | None = None
        try:
            if trunk is not None:
                domain, _, (host, port) = trunk_addresses(trunk)
                to_uri = _as_uri(request.to, domain)
                from_uri = _as_uri(request.from_ or trunk.username, domain)
                login = Login(trunk.username, trunk.password)
            else:
                if not request.to.startswith("sip:"):
                    raise DialError(400, "without a trunk, 'to' must be a sip: URI")
                to_uri = _as_uri(request.to, "")
                from_uri = _as_uri(request.from_ or "voxgate", self.local_host)
                target = SipUri.parse(to_uri)
                host, port = target.address, target.port or 5060
        except SipParseError as exc:
            raise DialError(400, str(exc)) from None
        except ValueError as exc:
            raise DialError(400, f"trunk {request.trunk!r}: {exc}") from None
        try:
            transport = trunk.transport if trunk is not None else "udp"
            destination = Peer(transport, await resolve(host, port))
        except OSError as exc:
            raise DialError(503, f"cannot resolve {host[:60]!r}: {exc}") from None
        try:
            return self.ua.invite(
                to_uri,
                from_uri=from_uri,
                sessions=self._sessions,
                login=login,
                destination=destination,
            )
        except SipParseError as exc:
            raise DialError(400, str(exc)) from None
        except Refused as exc:
            raise DialError(503, exc.reason or "refused") from None
        except MediaRefused as exc:
            raise DialError(503, str(exc)) from None


def _as_uri(text: str, domain: str) -> str:
    """``text`` if it is a SIP URI, else ``sip:<text>@<domain>`` (SipParseError if bad)."""
    text = text.strip()
    if not text:
        raise SipParseError("empty user part")
    if text.startswith(("sip:", "sips:")):
        uri = SipUri.parse(text)
    else:
        uri = SipUri.parse(f"sip:{text}@{domain}")
    if uri.scheme != "sip" or uri.user is None:
        raise SipParseError(f"{text[:60]!r} is not a sip:user@host URI")
    return str(uri)


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


async def post_calls(request: web.Request) -> web.Response:
    """``POST /calls``: see the module docstring."""
    dialer: Dialer | None = request.app.get(DIALER_KEY)
    if dialer is None:
        return _error(503, "SIP is off")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _error(400, f"body over {MAX_BODY_BYTES} bytes")
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        return _error(400, f"body over {MAX_BODY_BYTES} bytes")
    try:
        body = msgspec.json.decode(raw, type=CallRequest)
    except msgspec.DecodeError as exc:
        return _error(400, f"bad request body: {exc}")
    try:
        call = await dialer.dial(body)
    except DialError as exc:
        log.info("POST /calls to %r refused: %d %s", body.to[:60], exc.status, exc.reason)
        return _error(exc.status, exc.reason)
    return web.json_response({"call_id": call.call_id}, status=201)


def add_calls_route(app: web.Application) -> None:
    """Mount ``POST /calls`` (it answers 503 until ``app[DIALER_KEY]`` is set)."""
    app.router.add_post("/calls", post_calls)
