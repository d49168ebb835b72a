"""SIP messages on the wire (RFC 3261 §7, §18.3, §20, §25; RFC 3581; RFC 5626 §3.5.1).

Everything a reader needs about the SIP text format is in this file:

* :func:`parse_message` turns one UDP datagram into a :class:`Request` or a
  :class:`Response`; :class:`StreamFramer` cuts a TCP byte stream into messages
  (Content-Length is mandatory there) and notices CRLF keepalive pings.
* :class:`Headers` keeps header fields in order, looks them up case-insensitively,
  expands compact names (``v`` → ``Via``, ``i`` → ``Call-ID`` ...) and splits the
  comma lists of Via, Route, Record-Route, Contact (not ``*``), Path and
  Service-Route into one entry per element.
* Typed views, parsed on demand: :class:`SipUri`, :class:`Address` (name-addr),
  :class:`Via` and :class:`CSeq`.
* Builders for a UA: :func:`make_request`, :func:`make_response`; checks and
  stamps: :func:`check_request`, :func:`stamp_received`.

Tolerances, on purpose: bare LF line endings, leading CRLFs before the start line,
folded header lines (a line starting with SP or HT continues the previous header;
it is unfolded into one space), LWS around ``:`` and inside Via's ``SIP / 2.0 / UDP``.
Refused: any SIP version but 2.0, control characters, header sections that are not
UTF-8, more than :data:`MAX_HEADERS` header entries, messages over the size limit.

Every problem in received bytes raises :class:`SipParseError`, whose ``str()`` is a
short reason without CR or LF, usable as a log line or a 400 reason phrase.
Nothing else escapes the parsers, the framer or the typed views.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, TypeAlias

MAX_MESSAGE_BYTES: Final = 65535
"""Default size limit of one message, start line to end of body (bytes)."""
MAX_HEADERS: Final = 256
"""Most header entries one message may carry (after list splitting, Content-Length aside)."""
SIP_VERSION: Final = "SIP/2.0"

_TOKEN: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_PARAM_NAME: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~\[\]/:&$]+")
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_HOSTNAME: Final = re.compile(r"[A-Za-z0-9\-_.]+")
_USER: Final = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%#]+")
_TEL_NUMBER: Final = re.compile(r"\+?[0-9A-Fa-f*#\-.()pPwW]+")
_VIA_HEAD: Final = re.compile(r"([^\s/]+)\s*/\s*([^\s/]+)\s*/\s*([^\s/]+)\s+(\S.*)", re.S)
_BAD_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MAX_DIGITS: Final = 10

# RFC 3261 §7.3.3 and later extensions (IANA "SIP Parameters", compact forms).
_COMPACT: Final = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}
_CANONICAL: Final = {
    name.lower(): name
    for name in (
        "Accept",
        "Accept-Contact",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Authentication-Info",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Diversion",
        "Error-Info",
        "Event",
        "Expires",
        "From",
        "History-Info",
        "Identity",
        "Identity-Info",
        "In-Reply-To",
        "Max-Forwards",
        "MIME-Version",
        "Min-Expires",
        "Min-SE",
        "Organization",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
        "Path",
        "Priority",
        "Privacy",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "RAck",
        "Reason",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Reject-Contact",
        "Remote-Party-ID",
        "Reply-To",
        "Request-Disposition",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "Server",
        "Service-Route",
        "Session-Expires",
        "Subject",
        "Subscription-State",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
    )
}
_LIST_HEADERS: Final = frozenset(
    {"via", "route", "record-route", "contact", "path", "service-route"}
)
_SINGLE_HEADERS: Final = ("From", "To", "Call-ID", "CSeq", "Max-Forwards")
_RESPONSE_COPIED: Final = ("via", "from", "to", "call-id", "cseq")

REASON_PHRASES: Final[dict[int, str]] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}
_CLASS_REASONS: Final = {
    1: "Trying",
    2: "OK",
    3: "Redirect",
    4: "Request Failure",
    5: "Server Failure",
    6: "Global Failure",
}


class SipParseError(ValueError):
    """Bytes or a header value are not usable SIP; ``str()`` is the reason (no CR/LF)."""


def reason_phrase(status: int) -> str:
    """The standard reason phrase of ``status`` (a class default for unlisted codes)."""
    return REASON_PHRASES.get(status) or _CLASS_REASONS.get(status // 100, "Unknown")


def _show(text: str, limit: int = 40) -> str:
    """Untrusted text, shortened and escaped, for an error reason."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


def _is_digits(text: str, max_digits: int = _MAX_DIGITS) -> bool:
    """ASCII digits only, of a sane length (``str.isdigit`` also takes "²")."""
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()


def _key(name: str) -> str:
    """The lookup key of a header name: lower case, compact form expanded."""
    key = name.lower()
    return _COMPACT.get(key, key)


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """Unescape the quoted-string at ``text[start] == '"'``; return it and the index after."""
    out: list[str] = []
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n:
                break
            out.append(text[i + 1])
            i += 2
        elif c == '"':
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    raise SipParseError(f"unterminated quoted string in {_show(text)}")


def _quote(text: str) -> str:
    """``text`` as a quoted-string (backslash-escaping ``"`` and ``\\``)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split(text: str, sep: str, *, angles: bool = False) -> list[str]:
    """Split on ``sep`` outside quoted strings (and outside ``<...>`` when ``angles``)."""
    if sep not in text:
        return [text]
    if '"' not in text and not (angles and "<" in text):
        return text.split(sep)
    parts: list[str] = []
    start = 0
    i = 0
    n = len(text)
    in_angle = False
    while i < n:
        c = text[i]
        if c == '"':
            i = _read_quoted(text, i)[1]
            continue
        if angles and c == "<":
            in_angle = True
        elif angles and c == ">":
            in_angle = False
        elif c == sep and not in_angle:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _parse_params(text: str, what: str) -> dict[str, str | None]:
    """``;name[=value]...`` (leading ``;`` optional) → names lower-cased, values as written.

    A name without ``=`` maps to ``None`` (a flag such as ``lr`` or ``rport``).
    """
    params: dict[str, str | None] = {}
    for piece in _split(text, ";"):
        name, eq, value = piece.partition("=")
        name = name.strip().lower()
        if not name:
            if eq or value.strip():
                raise SipParseError(f"{what} parameter without a name")
            continue
        if not _PARAM_NAME.fullmatch(name):
            raise SipParseError(f"bad {what} parameter name {_show(name)}")
        if name in params:
            raise SipParseError(f"duplicate {what} parameter {_show(name)}")
        params[name] = value.strip() if eq else None
    return params


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _parse_port(text: str, what: str) -> int:
    if not _is_digits(text, 5) or int(text) > 65535:
        raise SipParseError(f"bad port {_show(text)} in {what}")
    return int(text)


def _parse_hostport(text: str, what: str) -> tuple[str, int | None]:
    """``host[:port]`` with IPv6 in brackets; the host is returned as written."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"unclosed IPv6 bracket in {what}")
        host = text[: end + 1]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise SipParseError(f"bad IPv6 address {_show(host)} in {what}") from None
        rest = text[end + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise SipParseError(f"junk after the IPv6 address in {what}")
        return host, _parse_port(rest[1:], what)
    host, colon, port = text.partition(":")
    if not _HOSTNAME.fullmatch(host):
        raise SipParseError(f"bad host {_show(host)} in {what}")
    return host, _parse_port(port, what) if colon else None


def _bare_host(host: str) -> str:
    """The host without IPv6 brackets."""
    return host[1:-1] if host.startswith("[") else host


# --------------------------------------------------------------------------- headers


class Headers:
    """Ordered header fields with case-insensitive, compact-form-aware lookup.

    Known names are stored in their canonical spelling (``Call-ID``, ``CSeq``);
    others as written.  Values are stripped of surrounding whitespace.  List
    headers (Via, Route, Record-Route, Contact except ``*``, Path,
    Service-Route) are split on top-level commas: one entry per element, and
    one line per entry when serialized.  Equality compares names
    case-insensitively and values exactly, in order.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str, str]] = []
        """``(key, name, value)``: lookup key, name as it is written out, value."""
        for name, value in items:
            self.add(name, value)

    @staticmethod
    def _entries(name: str, value: str) -> list[tuple[str, str, str]]:
        if not _TOKEN.fullmatch(name):
            raise SipParseError(f"bad header name {_show(name)}")
        if _BAD_CONTROL.search(value) or "\r" in value or "\n" in value:
            raise SipParseError(f"control character in the {name} header")
        key = _key(name)
        display = _CANONICAL.get(key, name)
        value = value.strip(" \t")
        if key in _LIST_HEADERS and value != "*":
            pieces = [p.strip(" \t") for p in _split(value, ",", angles=True)]
            return [(key, display, p) for p in pieces if p]
        return [(key, display, value)]

    def get(self, name: str) -> str | None:
        """The first value of ``name``, or ``None``."""
        key = _key(name)
        for k, _, v in self._items:
            if k == key:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order (list headers: one per element)."""
        key = _key(name)
        return [v for k, _, v in self._items if k == key]

    def tokens(self, name: str) -> list[str]:
        """The comma-separated tokens of every ``name`` line (Allow, Supported, Require ...)."""
        out: list[str] = []
        for value in self.get_all(name):
            out.extend(t for t in (p.strip(" \t") for p in value.split(",")) if t)
        return out

    def add(self, name: str, value: str, *, top: bool = False) -> None:
        """Append ``name: value`` (before the first ``name`` entry when ``top``)."""
        entries = self._entries(name, value)
        if not top:
            self._items.extend(entries)
            return
        key = _key(name)
        at = next((i for i, item in enumerate(self._items) if item[0] == key), 0)
        self._items[at:at] = entries

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` entry by ``value``, at the first entry's position."""
        self.set_all(name, [value])

    def set_all(self, name: str, values: Iterable[str]) -> None:
        """Replace every ``name`` entry by ``values``, at the first entry's position."""
        entries = [e for v in values for e in self._entries(name, v)]
        key = _key(name)
        at = next((i for i, item in enumerate(self._items) if item[0] == key), len(self._items))
        self._items = [item for item in self._items if item[0] != key]
        self._items[at:at] = entries

    def remove(self, name: str) -> int:
        """Drop every ``name`` entry; return how many there were."""
        key = _key(name)
        before = len(self._items)
        self._items = [item for item in self._items if item[0] != key]
        return before - len(self._items)

    def copy(self) -> Headers:
        clone = Headers()
        clone._items = list(self._items)
        return clone

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((n, v) for _, n, v in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k, v) for k, _, v in self._items] == [(k, v) for k, _, v in other._items]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({[(n, v) for _, n, v in self._items]!r})"


# --------------------------------------------------------------------------- typed views


@dataclass(slots=True)
class SipUri:
    """A ``sip:``, ``sips:`` or ``tel:`` URI (RFC 3261 §19.1, RFC 3966).

    ``host`` is as written (IPv6 keeps its brackets; see :attr:`address`); ``user``
    and values are as written, percent-escapes not decoded.  Parameter names are
    lower-cased.  A ``tel:`` URI has its number in ``user`` and an empty host.
    """

    host: str
    user: str | None = None
    port: int | None = None
    scheme: str = "sip"
    password: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> SipUri:
        text = text.strip(" \t")
        scheme, colon, rest = text.partition(":")
        if not colon or not _SCHEME.fullmatch(scheme):
            raise SipParseError(f"URI without a scheme: {_show(text)}")
        scheme = scheme.lower()
        if scheme == "tel":
            number, _, params = rest.partition(";")
            if not _TEL_NUMBER.fullmatch(number):
                raise SipParseError(f"bad tel URI number {_show(number)}")
            return cls(host="", user=number, scheme="tel", params=_parse_params(params, "URI"))
        if scheme not in ("sip", "sips"):
            raise SipParseError(f"unsupported URI scheme {_show(scheme)}")
        user: str | None = None
        password: str | None = None
        at = rest.find("@")
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user, pcolon, pw = userinfo.partition(":")
            if not _USER.fullmatch(user):
                raise SipParseError(f"bad user part {_show(user)} in a URI")
            if pcolon:
                if pw and not _USER.fullmatch(pw):
                    raise SipParseError("bad password in a URI")
                password = pw
        rest, qmark, query = rest.partition("?")
        hostport, _, params = rest.partition(";")
        host, port = _parse_hostport(hostport, "a URI")
        headers: dict[str, str] = {}
        if qmark:
            for pair in query.split("&"):
                hname, eq, hvalue = pair.partition("=")
                if not eq or not hname or not _PARAM_NAME.fullmatch(hname):
                    raise SipParseError(f"bad URI header {_show(pair)}")
                if hname in headers:
                    raise SipParseError(f"duplicate URI header {_show(hname)}")
                headers[hname] = hvalue
        return cls(host, user, port, scheme, password, _parse_params(params, "URI"), headers)

    @property
    def address(self) -> str:
        """The host without IPv6 brackets (what a socket wants)."""
        return _bare_host(self.host)

    @property
    def transport(self) -> str | None:
        """The ``transport=`` parameter, lower-cased, or ``None``."""
        value = self.params.get("transport")
        return value.lower() if value else None

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{_format_params(self.params)}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(_format_params(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(out)


@dataclass(slots=True)
class Address:
    """A name-addr or addr-spec header value: From, To, Contact, Route (RFC 3261 §20.10).

    ``display_name`` is unquoted.  ``params`` are the header parameters (``tag``,
    ``expires``, ``q``, ...), names lower-cased, values as written.  Without angle
    brackets every ``;param`` belongs to the header, not to the URI.
    ``str()`` always writes the ``<URI>`` form.
    """

    uri: SipUri
    display_name: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Address:
        text = text.strip(" \t")
        display: str | None = None
        if text.startswith('"'):
            display, end = _read_quoted(text, 0)
            text = text[end:].lstrip(" \t")
            if not text.startswith("<"):
                raise SipParseError("a quoted display name must be followed by <URI>")
        lt = text.find("<")
        if lt >= 0:
            if display is None:
                display = text[:lt].strip(" \t") or None
                if display is not None and ('"' in display or ">" in display):
                    raise SipParseError(f"bad display name {_show(display)}")
            gt = text.find(">", lt)
            if gt < 0:
                raise SipParseError(f"unclosed < in {_show(text)}")
            uri = SipUri.parse(text[lt + 1 : gt])
            rest = text[gt + 1 :].strip(" \t")
            if rest and not rest.startswith(";"):
                raise SipParseError(f"junk after <URI>: {_show(rest)}")
            return cls(uri, display, _parse_params(rest, "header"))
        uri_text, _, params = text.partition(";")
        if "?" in uri_text or ">" in uri_text:
            raise SipParseError(f"a URI with headers needs <...>: {_show(uri_text)}")
        return cls(SipUri.parse(uri_text), None, _parse_params(params, "header"))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def expires(self) -> int | None:
        """The ``expires=`` parameter (seconds), or ``None``."""
        value = self.params.get("expires")
        if value is None:
            return None
        if not _is_digits(value):
            raise SipParseError(f"bad expires parameter {_show(value)}")
        return int(value)

    def __str__(self) -> str:
        name = f"{_quote(self.display_name)} " if self.display_name else ""
        return f"{name}<{self.uri}>{_format_params(self.params)}"


NameAddr: TypeAlias = Address


@dataclass(slots=True)
class Via:
    """One Via element: ``SIP/2.0/UDP host:port;branch=...;rport`` (RFC 3261 §20.42).

    ``transport`` is upper-cased; ``host`` as written (IPv6 in brackets).  In
    ``params`` a flag (``rport`` as sent by a client asking for RFC 3581) maps
    to ``None``.
    """

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = SIP_VERSION

    @classmethod
    def parse(cls, text: str) -> Via:
        head, _, params = text.strip(" \t").partition(";")
        m = _VIA_HEAD.fullmatch(head.strip(" \t"))
        if m is None:
            raise SipParseError(f"malformed Via {_show(text)}")
        name, version, transport, sent_by = m.groups()
        if name.upper() != "SIP" or version != "2.0":
            raise SipParseError(f"unsupported protocol in Via: {_show(name + '/' + version)}")
        if not _TOKEN.fullmatch(transport):
            raise SipParseError(f"bad Via transport {_show(transport)}")
        host, port = _parse_hostport("".join(sent_by.split()), "Via")
        via = cls(transport.upper(), host, port, _parse_params(params, "Via"))
        rport = via.params.get("rport")
        if rport is not None:
            _parse_port(rport, "Via rport")
        return via

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def wants_rport(self) -> bool:
        """The ``rport`` parameter is present (flag or filled in)."""
        return "rport" in self.params

    @property
    def rport(self) -> int | None:
        """The filled-in ``rport=`` value (a port), or ``None`` (absent or a bare flag)."""
        value = self.params.get("rport")
        return None if value is None else _parse_port(value, "Via rport")

    @property
    def address(self) -> str:
        """The sent-by host without IPv6 brackets."""
        return _bare_host(self.host)

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.protocol}/{self.transport} {self.host}{port}{_format_params(self.params)}"


@dataclass(frozen=True, slots=True)
class CSeq:
    """``CSeq: <number> <method>``; number in 0 .. 2**31 - 1."""

    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        parts = text.split()
        if len(parts) != 2 or not _is_digits(parts[0]) or not _TOKEN.fullmatch(parts[1]):
            raise SipParseError(f"malformed CSeq {_show(text)}")
        number = int(parts[0])
        if number >= 2**31:
            raise SipParseError("CSeq number out of range")
        return cls(number, parts[1])

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


# --------------------------------------------------------------------------- messages


class _Message:
    """What requests and responses share: headers, body, typed lookups."""

    __slots__ = ()
    headers: Headers
    body: bytes

    def _start_line(self) -> str:
        raise NotImplementedError

    def serialize(self) -> bytes:
        """Canonical bytes: CRLF line ends, one line per header entry, and
        ``Content-Length`` set from the body (any stored one is dropped)."""
        lines = [self._start_line()]
        lines += [f"{n}: {v}" for k, n, v in self.headers._items if k != "content-length"]
        lines += [f"Content-Length: {len(self.body)}", "", ""]
        return "\r\n".join(lines).encode("utf-8") + self.body

    def _one(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipParseError(f"missing {name} header")
        return value

    @property
    def call_id(self) -> str | None:
        return self.headers.get("Call-ID")

    def from_address(self) -> Address:
        """The parsed From header (SipParseError if missing or malformed)."""
        return Address.parse(self._one("From"))

    def to_address(self) -> Address:
        """The parsed To header (SipParseError if missing or malformed)."""
        return Address.parse(self._one("To"))

    @property
    def from_tag(self) -> str | None:
        """The From tag; ``None`` without From or tag (SipParseError if malformed)."""
        value = self.headers.get("From")
        return None if value is None else Address.parse(value).tag

    @property
    def to_tag(self) -> str | None:
        """The To tag; ``None`` without To or tag (SipParseError if malformed)."""
        value = self.headers.get("To")
        return None if value is None else Address.parse(value).tag

    def vias(self) -> list[Via]:
        """Every Via element, top first (SipParseError if one is malformed)."""
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    def top_via(self) -> Via:
        return Via.parse(self._one("Via"))

    @property
    def branch(self) -> str | None:
        """The top Via's branch; ``None`` without Via or branch."""
        value = self.headers.get("Via")
        return None if value is None else Via.parse(value).branch

    def cseq(self) -> CSeq:
        return CSeq.parse(self._one("CSeq"))

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("Max-Forwards")
        if value is None:
            return None
        if not _is_digits(value, 3) or int(value) > 255:
            raise SipParseError(f"bad Max-Forwards {_show(value)}")
        return int(value)

    @property
    def content_length(self) -> int | None:
        """The Content-Length header's value (bytes), or ``None`` when absent."""
        value = self.headers.get("Content-Length")
        if value is None:
            return None
        if not _is_digits(value):
            raise SipParseError(f"bad Content-Length {_show(value)}")
        return int(value)

    @property
    def content_type(self) -> str | None:
        """The media type, lower-cased without parameters (``application/sdp``)."""
        value = self.headers.get("Content-Type")
        return None if value is None else value.partition(";")[0].strip(" \t").lower()

    def contacts(self) -> list[Address]:
        """Every Contact element; a wildcard ``*`` is skipped."""
        return [Address.parse(v) for v in self.headers.get_all("Contact") if v != "*"]

    def record_routes(self) -> list[Address]:
        return [Address.parse(v) for v in self.headers.get_all("Record-Route")]

    def routes(self) -> list[Address]:
        return [Address.parse(v) for v in self.headers.get_all("Route")]


@dataclass(slots=True, eq=True)
class Request(_Message):
    """A SIP request.  ``uri`` is the Request-URI as written (see :meth:`request_uri`)."""

    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    def request_uri(self) -> SipUri:
        """The parsed Request-URI (SipParseError for a bad or non-SIP/tel URI)."""
        return SipUri.parse(self.uri)


@dataclass(slots=True, eq=True)
class Response(_Message):
    """A SIP response; ``status`` 100..699."""

    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def _start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"


Message: TypeAlias = Request | Response


# --------------------------------------------------------------------------- parsing


def _skip_crlf(data: bytes | bytearray, start: int = 0) -> int:
    """Index of the first byte at or after ``start`` that is not CR or LF."""
    n = len(data)
    while start < n and data[start] in (13, 10):
        start += 1
    return start


def _find_head_end(data: bytes | bytearray, start: int) -> tuple[int, int]:
    """``(end of headers, start of body)`` for the first empty line, or ``(-1, -1)``."""
    crlf = data.find(b"\r\n\r\n", start)
    lf = data.find(b"\n\n", start)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf, lf + 2
    if crlf >= 0:
        return crlf, crlf + 4
    return -1, -1


def _parse_start_line(line: str) -> Request | Response:
    if line[:4].upper() == "SIP/":
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        if version.upper() != SIP_VERSION:
            raise SipParseError(f"unsupported SIP version {_show(version)}")
        if len(code) != 3 or not _is_digits(code) or not 100 <= int(code) <= 699:
            raise SipParseError(f"bad status code {_show(code)}")
        return Response(int(code), reason)
    parts = line.split(" ")
    if len(parts) != 3 or not parts[1]:
        raise SipParseError(f"malformed request line {_show(line)}")
    method, uri, version = parts
    if not _TOKEN.fullmatch(method):
        raise SipParseError(f"bad method {_show(method)}")
    if version.upper() != SIP_VERSION:
        raise SipParseError(f"unsupported SIP version {_show(version)}")
    return Request(method, uri)


def _parse_head(data: bytes | bytearray, start: int, end: int) -> Request | Response:
    """The start line and headers in ``data[start:end]``; the body is left empty."""
    try:
        text = bytes(data[start:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("header section is not UTF-8") from None
    if _BAD_CONTROL.search(text):
        raise SipParseError("control character in the header section")
    lines = text.split("\n")
    first = lines[0].removesuffix("\r")
    if "\r" in first:
        raise SipParseError("bare CR in the start line")
    message = _parse_start_line(first)
    logical: list[str] = []
    for raw in lines[1:]:
        line = raw.removesuffix("\r")
        if "\r" in line:
            raise SipParseError("bare CR in a header line")
        if line[:1] in (" ", "\t"):
            if not logical:
                raise SipParseError("continuation line before the first header")
            logical[-1] += " " + line.strip(" \t")
        else:
            logical.append(line)
    items = message.headers._items
    for line in logical:
        colon = line.find(":")
        if colon < 0:
            raise SipParseError(f"header line without a colon: {_show(line)}")
        name = line[:colon].rstrip(" \t")
        if not _TOKEN.fullmatch(name):
            raise SipParseError(f"bad header name {_show(name)}")
        value = line[colon + 1 :].strip(" \t")
        key = _key(name)
        display = _CANONICAL.get(key, name)
        if key in _LIST_HEADERS and value != "*" and "," in value:
            for raw_piece in _split(value, ",", angles=True):
                piece = raw_piece.strip(" \t")
                if piece:
                    items.append((key, display, piece))
        elif value or key not in _LIST_HEADERS:
            items.append((key, display, value))
    if sum(1 for item in items if item[0] != "content-length") > MAX_HEADERS:
        raise SipParseError(f"more than {MAX_HEADERS} header entries")
    return message


def _declared_length(headers: Headers) -> int | None:
    values = headers.get_all("Content-Length")
    if not values:
        return None
    if len(values) > 1:
        raise SipParseError("more than one Content-Length header")
    if not _is_digits(values[0]):
        raise SipParseError(f"bad Content-Length {_show(values[0])}")
    return int(values[0])


def parse_message(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Request | Response:
    """Parse one datagram (UDP rules, RFC 3261 §18.3).

    Without Content-Length the body is the rest of the datagram; with one, the
    declared length must be present and any bytes after it are ignored.  Only the
    structure is checked here; :func:`check_request` says whether a request is
    usable.  Raises :class:`SipParseError`.
    """
    if len(data) > max_bytes:
        raise SipParseError(f"message too large ({len(data)} bytes > {max_bytes})")
    start = _skip_crlf(data)
    if start == len(data):
        raise SipParseError("empty message")
    head_end, body_start = _find_head_end(data, start)
    if head_end < 0:
        raise SipParseError("no empty line after the headers")
    message = _parse_head(data, start, head_end)
    declared = _declared_length(message.headers)
    if declared is None:
        message.body = bytes(data[body_start:])
    else:
        available = len(data) - body_start
        if declared > available:
            raise SipParseError(
                f"Content-Length {declared} exceeds the {available} body bytes received"
            )
        message.body = bytes(data[body_start : body_start + declared])
    return message


def is_keepalive(data: bytes) -> bool:
    """True for a datagram of only CR, LF, NUL or spaces (NAT keepalives some UAs send)."""
    return len(data) <= 16 and not data.strip(b"\r\n\x00 ")


class StreamFramer:
    """Cuts a TCP (or TLS) byte stream into SIP messages (RFC 3261 §18.3, RFC 5626 §3.5.1).

    Content-Length is mandatory on streams.  CRLFs between messages are skipped;
    a double CRLF there is a keepalive ping, after which :attr:`pong_due` is true
    until the next :meth:`feed`: the caller answers with a single ``b"\\r\\n"``.
    A :class:`SipParseError` (bad header, missing Content-Length, a message or
    header section over ``max_bytes``) leaves the stream out of sync: close the
    connection.
    """

    __slots__ = ("_buf", "_crlfs", "_max_bytes", "_pending", "_scanned", "pong_due")

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buf = bytearray()
        self._max_bytes = max_bytes
        self._pending: tuple[Request | Response, int] | None = None
        self._crlfs = 0
        self._scanned = 0
        """How far the current header section was searched for its end (bytes)."""
        self.pong_due = False
        """A keepalive ping (CRLFCRLF) arrived in the last :meth:`feed`."""

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as messages."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Request | Response]:
        """Add received bytes; return the messages completed by them, in order."""
        self.pong_due = False
        buf = self._buf
        buf += data
        out: list[Request | Response] = []
        while True:
            if self._pending is not None:
                message, length = self._pending
                if len(buf) < length:
                    break
                message.body = bytes(buf[:length])
                del buf[:length]
                self._pending = None
                out.append(message)
                continue
            i = 0
            n = len(buf)
            while i < n and buf[i] in (13, 10):
                if buf[i] == 13:
                    if i + 1 >= n:
                        break
                    if buf[i + 1] == 10:
                        i += 2
                        self._crlfs += 1
                        if self._crlfs >= 2:
                            self.pong_due = True
                            self._crlfs = 0
                        continue
                    raise SipParseError("bare CR between messages")
                i += 1
            if i:
                del buf[:i]
            if not buf or buf[0] == 13:
                break
            self._crlfs = 0
            head_end, body_start = _find_head_end(buf, max(0, self._scanned - 3))
            if head_end < 0:
                if len(buf) > self._max_bytes:
                    raise SipParseError(f"header section longer than {self._max_bytes} bytes")
                self._scanned = len(buf)
                break
            self._scanned = 0
            message = _parse_head(buf, 0, head_end)
            declared = _declared_length(message.headers)
            if declared is None:
                raise SipParseError("Content-Length is mandatory on stream transports")
            if body_start + declared > self._max_bytes:
                raise SipParseError(
                    f"message too large ({body_start + declared} bytes > {self._max_bytes})"
                )
            del buf[:body_start]
            self._pending = (message, declared)
        return out


# --------------------------------------------------------------------------- building


def _as_str(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def make_request(
    method: str,
    uri: SipUri | str,
    *,
    call_id: str,
    from_addr: Address | str,
    to_addr: Address | str,
    cseq: int,
    via: Via | str,
    contact: Address | str | None = None,
    route: Iterable[Address | str] = (),
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
    max_forwards: int = 70,
) -> Request:
    """A new request, headers in the order Via, Max-Forwards, Route, From, To,
    Call-ID, CSeq (``cseq`` + ``method``), Contact, ``headers``, Content-Type.

    The caller supplies the tags (in ``from_addr``/``to_addr``) and the Via
    branch; ``route`` is the route set in order.  Content-Length comes from
    ``body`` on :meth:`~Request.serialize`.
    """
    h = Headers()
    h.add("Via", _as_str(via))
    h.add("Max-Forwards", str(max_forwards))
    for hop in route:
        h.add("Route", _as_str(hop))
    h.add("From", _as_str(from_addr))
    h.add("To", _as_str(to_addr))
    h.add("Call-ID", call_id)
    h.add("CSeq", f"{cseq} {method}")
    if contact is not None:
        h.add("Contact", _as_str(contact))
    for name, value in headers:
        h.add(name, value)
    if content_type is not None:
        h.set("Content-Type", content_type)
    return Request(method, _as_str(uri), h, body)


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """A response to ``request`` (RFC 3261 §8.2.6): every Via in order, From, To,
    Call-ID and CSeq copied; ``;tag=to_tag`` added to To when it has no tag yet;
    Timestamp copied into a 100.  Then ``headers`` and Content-Type.

    Not done here: Record-Route, which the caller copies (in order) into 18x/2xx
    responses to dialog-creating requests (INVITE), and Contact, which the caller
    adds to 18x/2xx of INVITE.  Call :func:`stamp_received` on the request first
    so the top Via carries ``received``/``rport``.  Raises SipParseError when the
    request's To cannot be parsed to look for a tag.
    """
    if not 100 <= status <= 699:
        raise ValueError(f"status {status} is not in 100..699")
    reason = reason_phrase(status) if reason is None else reason
    if "\r" in reason or "\n" in reason:
        raise ValueError("reason phrase contains CR or LF")
    src = request.headers._items
    copied = _RESPONSE_COPIED + (("timestamp",) if status == 100 else ())
    response = Response(status, reason)
    items = response.headers._items
    for key in copied:
        items.extend(item for item in src if item[0] == key)
    if to_tag is not None:
        for i, (key, name, value) in enumerate(items):
            if key == "to":
                if Address.parse(value).tag is None:
                    items[i] = (key, name, f"{value};tag={to_tag}")
                break
    for name, value in headers:
        response.headers.add(name, value)
    if content_type is not None:
        response.headers.set("Content-Type", content_type)
    response.body = body
    return response


# --------------------------------------------------------------------------- checks


def check_request(request: Request) -> None:
    """Raise SipParseError (reason for a 400) unless ``request`` is usable by a UA.

    Checked: Via present, every Via well formed, the top one with a branch;
    exactly one From (with a tag), To, Call-ID (no whitespace), CSeq (method equal
    to the request's) and Max-Forwards (0..255); a sip/sips/tel Request-URI well
    formed (other schemes are left for a 416); Contact present and single in an
    INVITE; Contact, Route and Record-Route well formed; Content-Length, if
    present, equal to the body length.
    """
    h = request.headers
    vias = request.vias()
    if not vias:
        raise SipParseError("missing Via header")
    if not vias[0].branch:
        raise SipParseError("top Via has no branch parameter")
    for name in _SINGLE_HEADERS:
        count = len(h.get_all(name))
        if count == 0:
            raise SipParseError(f"missing {name} header")
        if count > 1:
            raise SipParseError(f"more than one {name} header")
    if request.from_address().tag is None:
        raise SipParseError("From header has no tag")
    request.to_address()
    call_id = h.get("Call-ID") or ""
    if not call_id or any(c.isspace() for c in call_id):
        raise SipParseError(f"malformed Call-ID {_show(call_id)}")
    cseq = request.cseq()
    if cseq.method != request.method:
        raise SipParseError(
            f"CSeq method {_show(cseq.method)} does not match {_show(request.method)}"
        )
    _ = request.max_forwards  # raises on a bad value
    scheme = request.uri.partition(":")[0].lower()
    if scheme in ("sip", "sips", "tel"):
        request.request_uri()
    elif not _SCHEME.fullmatch(scheme):
        raise SipParseError(f"malformed Request-URI {_show(request.uri)}")
    contacts = h.get_all("Contact")
    if request.method == "INVITE" and len(contacts) != 1:
        raise SipParseError("an INVITE needs exactly one Contact")
    if "*" in contacts and request.method != "REGISTER":
        raise SipParseError("Contact * is only allowed in REGISTER")
    request.contacts()
    request.routes()
    request.record_routes()
    declared = request.content_length
    if declared is not None and declared != len(request.body):
        raise SipParseError(
            f"Content-Length {declared} does not match the {len(request.body)} body bytes"
        )


def _same_ip(host: str, ip: str) -> bool:
    try:
        return ipaddress.ip_address(_bare_host(host)) == ipaddress.ip_address(_bare_host(ip))
    except ValueError:
        return False


def stamp_received(request: Request, source: tuple[str, int]) -> None:
    """Mark the top Via with where the request came from (RFC 3261 §18.2.1, RFC 3581 §4).

    Adds ``received=<source ip>`` when the sent-by host differs from it, or always
    when the Via carries ``rport``, whose value is then set to the source port.
    Responses go back to ``received``/``rport``.  Raises SipParseError when there is
    no Via or it is malformed.
    """
    ip, port = source[0], source[1]
    vias = request.headers.get_all("Via")
    if not vias:
        raise SipParseError("missing Via header")
    top = Via.parse(vias[0])
    changed = False
    if top.wants_rport:
        top.params["rport"] = str(port)
        changed = True
    if top.wants_rport or not _same_ip(top.host, ip):
        top.params["received"] = _bare_host(ip)
        changed = True
    if changed:
        vias[0] = str(top)
        request.headers.set_all("Via", vias)
