"""Registering to a SIP trunk (RFC 3261 §10.2): one REGISTER client per trunk.

A :class:`Registration` keeps one binding of our Contact at a registrar:

* ``REGISTER sip:<domain>`` with ``To``/``From`` our address of record
  (``sip:<username>@<domain>``), our ``Contact`` and ``Expires: <s>``; the same
  Call-ID and From tag for the registration's whole life, CSeq up by one on
  every request; each request is a non-INVITE client transaction (Timer E/F).
* 401/407: the same REGISTER again with Digest credentials (see
  :class:`~server.sip.uac.DigestClient`: strongest algorithm, ``nc`` counting up
  while a nonce is reused, ``stale=true`` answered silently, a refused password
  is a failure).  Later refreshes carry the last credentials at once.
* 423 Interval Too Brief: again with the ``Min-Expires`` it names.
* 2xx: registered for what the registrar granted (our Contact's ``expires``
  parameter, else ``Expires``, else what we asked); the refresh goes out at
  60 % of that.
* Failures (other statuses, a timeout, a refused password): ``failed`` with the
  reason in :attr:`Registration.last_error`, retried after 30 s, doubling to
  10 min (or after ``Retry-After`` when the registrar says longer).
* :meth:`Registration.stop`: ``Expires: 0`` to remove the binding (shutdown).

The transport is the destination's (a trunk's ``transport``).  Over TCP the Via
says ``SIP/2.0/TCP`` and our Contact carries ``;transport=tcp``, so the
registrar reaches us the same way (RFC 3263: a bare ``sip:`` URI means UDP).
Every REGISTER goes to the same :class:`Peer` address: the transport reuses its
connection, and opens a new one when it dropped.  A connect failure or a reset
comes back as a 503 (RFC 3261 §8.1.3.1): a failure, retried like any other.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from server.sip.dialog import new_branch, new_call_id, new_tag
from server.sip.message import Address, Response, SipParseError, make_request
from server.sip.transaction import ClientNonInvite, Handle, Scheduler
from server.sip.transport import Peer, TransportName
from server.sip.uac import MAX_AUTH_ROUNDS, DigestClient, Login, Responses, SendTo

if TYPE_CHECKING:
    from server.config import SipTrunk

log = logging.getLogger(__name__)

REFRESH_FRACTION: Final = 0.6
"""Re-register after this share of the granted lifetime."""
RETRY_MIN_S: Final = 30.0
RETRY_MAX_S: Final = 600.0
MAX_EXPIRES_S: Final = 86_400 * 7
"""A Min-Expires above this is not believed (s)."""

RegistrationState = Literal[
    "idle", "registering", "registered", "failed", "unregistering", "unregistered"
]


def split_hostport(text: str, default_port: int = 5060) -> tuple[str, int]:
    """``host[:port]`` (IPv6 in brackets) -> (host, port); ValueError if malformed."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"no host in {text!r}")
    if not port_text:
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, int(port_text)


async def resolve(host: str, port: int) -> tuple[str, int]:
    """The IPv4 address of ``host`` (an address is returned as is); OSError if unknown."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
    address = infos[0][4]
    return str(address[0]), int(address[1])


@dataclass(frozen=True, slots=True)
class RegistrationStatus:
    """What logs and ``GET /calls`` show of one registration."""

    trunk: str
    state: RegistrationState
    last_error: str | None
    granted_s: int | None
    """Lifetime the registrar last granted (s)."""


class Registration:
    """One REGISTER client: see the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        aor: str,
        registrar_uri: str,
        contact: str,
        via_sent_by: str,
        destination: Peer,
        send: SendTo,
        scheduler: Scheduler,
        responses: Responses,
        login: Login | None,
        expires_s: int = 3600,
        transport: TransportName | None = None,
    ) -> None:
        """``transport`` names the Via transport; default the destination's."""
        self.name = name
        self.aor = aor
        self.registrar_uri = registrar_uri
        self.transport: TransportName = transport or destination.transport
        self.contact = contact_for_transport(contact, self.transport)
        self.via_sent_by = via_sent_by
        self.destination = destination
        self._send = send
        self._scheduler = scheduler
        self._responses = responses
        self._digest = DigestClient(login) if login is not None else None
        self.expires_s = expires_s
        """The lifetime we ask for (s); raised by a 423."""
        self.call_id = new_call_id(via_sent_by.rpartition(":")[0] or "voxgate")
        self.tag = new_tag()
        self.cseq = 0
        self.state: RegistrationState = "idle"
        self.last_error: str | None = None
        self.granted_s: int | None = None
        self.failures = 0
        self._tx: ClientNonInvite | None = None
        self._timer: Handle | None = None
        self._last: Response | None = None
        self._auth_rounds = 0
        self._asked_s = expires_s
        self._bound = False
        """The registrar may hold our binding (a REGISTER of ours got, or may have got, a 2xx)."""

    # -- public -----------------------------------------------------------------------

    def start(self) -> None:
        """Register now (and keep the binding refreshed)."""
        if self.state in ("idle", "unregistered"):
            self._cycle()

    def stop(self) -> None:
        """Remove our binding (``Expires: 0``) if we may hold one; stop refreshing."""
        self._cancel_timer()
        if self._tx is not None:
            self._tx.terminate()
        if not self._bound:
            self.state = "unregistered"
            return
        self.state = "unregistering"
        self._auth_rounds = 0
        self._send_register(0)

    def status(self) -> RegistrationStatus:
        return RegistrationStatus(self.name, self.state, self.last_error, self.granted_s)

    # -- requests -----------------------------------------------------------------------

    def _cycle(self) -> None:
        """A new registration or refresh."""
        self._timer = None
        self.state = "registering"
        self._auth_rounds = 0
        self._send_register(self.expires_s)

    def _send_register(self, expires_s: int) -> None:
        self.cseq += 1
        self._asked_s = expires_s
        branch = new_branch()
        headers: list[tuple[str, str]] = [("Expires", str(expires_s))]
        if self._digest is not None:
            headers += self._digest.headers("REGISTER", self.registrar_uri)
        request = make_request(
            "REGISTER",
            self.registrar_uri,
            call_id=self.call_id,
            from_addr=f"<{self.aor}>;tag={self.tag}",
            to_addr=f"<{self.aor}>",
            cseq=self.cseq,
            via=f"SIP/2.0/{self.transport.upper()} {self.via_sent_by};branch={branch};rport",
            contact=f"<{self.contact}>",
            headers=headers,
        )
        if expires_s > 0:
            self._bound = True
        self._last = None
        tx: ClientNonInvite | None = None

        def on_response(response: Response) -> None:
            if tx is not None and tx is self._tx:
                self._last = response
                tx.on_response(response.status)

        self._responses.expect(branch, on_response)
        tx = ClientNonInvite(
            request.serialize(),
            lambda data: self._send(data, self.destination),
            self._scheduler,
            self.destination.reliable,
            on_final=self._on_final,
            on_terminated=lambda: self._responses.forget(branch),
        )
        self._tx = tx

    # -- responses ----------------------------------------------------------------------

    def _on_final(self, status: int) -> None:
        response = self._last
        unregistering = self.state == "unregistering"
        if response is None:
            self._failed("no response from the registrar (timeout)", None)
            return
        if 200 <= status < 300:
            if unregistering:
                self.state = "unregistered"
                self._bound = False
                self.granted_s = None
                log.info("trunk %s: unregistered", self.name)
                return
            self._registered(response)
            return
        if status in (401, 407) and self._digest is not None:
            self._auth_rounds += 1
            if self._auth_rounds <= MAX_AUTH_ROUNDS and self._digest.on_challenge(response):
                self._send_register(self._asked_s)
                return
            self._failed(f"authentication failed ({self._digest.error or response.reason})", None)
            return
        if status == 423 and not unregistering:
            minimum = _min_expires(response)
            if minimum is not None and self._asked_s < minimum <= MAX_EXPIRES_S:
                self.expires_s = minimum
                self._send_register(minimum)
                return
            self._failed("423 without a usable Min-Expires", response)
            return
        self._failed(f"{status} {response.reason}", response)

    def _registered(self, response: Response) -> None:
        granted = self._granted(response)
        if granted <= 0:
            self._failed("the registrar granted no lifetime", response)
            return
        self.state = "registered"
        self.granted_s = granted
        self.last_error = None
        self.failures = 0
        log.info("trunk %s: registered for %d s", self.name, granted)
        self._schedule(granted * REFRESH_FRACTION)

    def _granted(self, response: Response) -> int:
        """The lifetime our binding got (s): our Contact's expires, else Expires, else asked."""
        try:
            ours = Address.parse(self.contact).uri
            for contact in response.contacts():
                if _same_uri(str(contact.uri), str(ours)) and contact.expires is not None:
                    return contact.expires
        except SipParseError:
            pass
        value = _seconds(response.headers.get("Expires"), 10)
        return self._asked_s if value is None else value

    def _failed(self, reason: str, response: Response | None) -> None:
        self.last_error = reason
        if self.state == "unregistering":
            self.state = "unregistered"
            log.info("trunk %s: unregister failed: %s", self.name, reason)
            return
        self.state = "failed"
        self.failures += 1
        delay = min(RETRY_MIN_S * 2 ** (self.failures - 1), RETRY_MAX_S)
        retry_after = _retry_after(response)
        if retry_after is not None:
            delay = max(delay, float(retry_after))
        log.warning("trunk %s: registration failed (%s); retry in %.0f s", self.name, reason, delay)
        self._schedule(delay)

    def _schedule(self, delay_s: float) -> None:
        self._cancel_timer()
        self._timer = self._scheduler.call_later(delay_s, self._cycle)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _same_uri(a: str, b: str) -> bool:
    try:
        ua, ub = Address.parse(a).uri, Address.parse(b).uri
    except SipParseError:
        return False
    return (ua.user, ua.host.lower(), ua.port or 5060) == (
        ub.user,
        ub.host.lower(),
        ub.port or 5060,
    )


def _seconds(value: str | None, max_digits: int) -> int | None:
    """A delta-seconds header value (parameters after ``;`` ignored), or ``None``."""
    if value is None:
        return None
    value = value.partition(";")[0].strip(" \t")
    ok = value.isascii() and value.isdigit() and len(value) <= max_digits
    return int(value) if ok else None


def _min_expires(response: Response) -> int | None:
    return _seconds(response.headers.get("Min-Expires"), 10)


def _retry_after(response: Response | None) -> int | None:
    return None if response is None else _seconds(response.headers.get("Retry-After"), 7)


def contact_for_transport(contact: str, transport: TransportName) -> str:
    """``contact`` (a SIP URI) with ``;transport=tcp`` added for TCP, unless it
    already names a transport."""
    if transport != "tcp" or ";transport=" in contact.lower():
        return contact
    return contact + ";transport=tcp"


def trunk_addresses(trunk: SipTrunk) -> tuple[str, str, tuple[str, int]]:
    """A trunk's (domain, registrar Request-URI, registrar host and port).

    The domain is ``trunk.domain``, else the registrar's ``host[:port]`` as written.
    ValueError for a malformed ``registrar``.
    """
    host, port = split_hostport(trunk.registrar)
    domain = trunk.domain or trunk.registrar.strip()
    return domain, f"sip:{domain}", (host, port)


async def start_registrations(
    trunks: Iterable[SipTrunk],
    responses: Responses,
    send: SendTo,
    *,
    contact: str,
    via_sent_by: str,
) -> list[Registration]:
    """A started :class:`Registration` for every trunk with ``register`` on; ``responses``
    is the user agent (it routes the REGISTER responses).  Each uses its trunk's
    transport (``contact`` gets ``;transport=tcp`` for TCP).

    Registrar names are resolved once, here; a trunk whose registrar cannot be
    resolved is logged and left out.  Call :meth:`Registration.stop` on each at
    shutdown (before the transport closes).
    """
    out: list[Registration] = []
    for trunk in trunks:
        if not trunk.register:
            continue
        try:
            domain, registrar_uri, (host, port) = trunk_addresses(trunk)
            address = await resolve(host, port)
        except (ValueError, OSError) as exc:
            log.warning("trunk %s: registrar %r unusable: %s", trunk.name, trunk.registrar, exc)
            continue
        registration = Registration(
            name=trunk.name,
            aor=f"sip:{trunk.username}@{domain}",
            registrar_uri=registrar_uri,
            contact=contact,
            via_sent_by=via_sent_by,
            destination=Peer(trunk.transport, address),
            send=send,
            scheduler=asyncio.get_running_loop(),
            responses=responses,
            login=Login(trunk.username, trunk.password),
            expires_s=trunk.expires_s,
        )
        registration.start()
        out.append(registration)
    return out
