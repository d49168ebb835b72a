"""HTTP Digest authentication as SIP uses it (RFC 2617, RFC 7616, RFC 8760; RFC 3261 §22).

Wire format, all in this file:

* A challenge (``WWW-Authenticate`` in a 401, ``Proxy-Authenticate`` in a 407) is
  ``Digest realm="...", nonce="...", opaque="...", algorithm=SHA-256,
  qop="auth,auth-int", stale=TRUE``; SIP puts one challenge per header line, so a
  server offering SHA-256 and MD5 sends two lines.
* The answer (``Authorization`` / ``Proxy-Authorization``) is ``Digest
  username="...", realm="...", nonce="...", uri="...", response="<hex>",
  algorithm=..., qop=auth, nc=00000001, cnonce="...", opaque="..."``.
  ``qop``, ``nc`` and ``algorithm`` are tokens; the other values quoted strings
  (backslash escapes ``"`` and ``\\``).
* ``response = H(HA1:nonce:nc:cnonce:qop:HA2)`` with a qop, ``H(HA1:nonce:HA2)``
  without one (RFC 2069 form); ``HA1 = H(user:realm:password)``, for ``-sess``
  algorithms ``H(H(user:realm:password):nonce:cnonce)``; ``HA2 = H(method:uri)``,
  for ``qop=auth-int`` ``H(method:uri:H(body))``.  H is MD5, SHA-256 or
  SHA-512/256, as lowercase hex.

Malformed input raises :class:`DigestError` (a ValueError whose ``str()`` is a
reason without CR/LF); nothing else escapes the parsers.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

MAX_HEADER_CHARS: Final = 8192
"""Longest challenge or credentials header value accepted (characters)."""

# Canonical spelling → (hashlib name, strength rank: higher is preferred).
_ALGORITHMS: Final[dict[str, tuple[str, int]]] = {
    "MD5": ("md5", 0),
    "MD5-sess": ("md5", 0),
    "SHA-256": ("sha256", 1),
    "SHA-256-sess": ("sha256", 1),
    "SHA-512-256": ("sha512_256", 2),
    "SHA-512-256-sess": ("sha512_256", 2),
}
_BY_UPPER: Final = {name.upper(): name for name in _ALGORITHMS}
_TOKEN: Final = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_BARE_VALUE: Final = re.compile(r'[^\s,"]+')
_HEX: Final = re.compile(r"[0-9a-fA-F]+")


def _available(hash_name: str) -> bool:
    try:
        hashlib.new(hash_name)
    except ValueError:
        return False
    return True


SUPPORTED_ALGORITHMS: Final = frozenset(
    name for name, (hash_name, _) in _ALGORITHMS.items() if _available(hash_name)
)
"""Algorithms this build can compute (SHA-512-256 needs OpenSSL support)."""


class DigestError(ValueError):
    """A challenge or credentials header is unusable; ``str()`` is the reason."""


def _show(text: str, limit: int = 40) -> str:
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


def _skip_space(text: str, pos: int) -> int:
    """The index of the first character at or after ``pos`` that is not SP or HT."""
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _canonical_algorithm(value: str | None) -> str:
    """The canonical spelling of a known algorithm (default MD5), else as written."""
    if value is None:
        return "MD5"
    return _BY_UPPER.get(value.upper(), value)


def _parse_fields(value: str, what: str) -> dict[str, str]:
    """``Digest name=value, name="quoted", ...`` → lower-cased names, unquoted values."""
    if len(value) > MAX_HEADER_CHARS:
        raise DigestError(f"{what} longer than {MAX_HEADER_CHARS} characters")
    if "\r" in value or "\n" in value or "\x00" in value:
        raise DigestError(f"control character in {what}")
    parts = value.split(None, 1)
    scheme = parts[0] if parts else ""
    rest = parts[1] if len(parts) > 1 else ""
    if scheme.lower() != "digest":
        raise DigestError(f"{what} is not a Digest one: {_show(scheme)}")
    fields: dict[str, str] = {}
    pos = 0
    n = len(rest)
    while True:
        pos = _skip_space(rest, pos)
        while pos < n and rest[pos] == ",":
            pos = _skip_space(rest, pos + 1)
        if pos >= n:
            break
        m = _TOKEN.match(rest, pos)
        if m is None:
            raise DigestError(f"bad parameter name in {what} at {_show(rest[pos:])}")
        name = m.group().lower()
        pos = _skip_space(rest, m.end())
        if pos >= n or rest[pos] != "=":
            raise DigestError(f"parameter {_show(name)} in {what} has no value")
        pos = _skip_space(rest, pos + 1)
        if pos < n and rest[pos] == '"':
            chars: list[str] = []
            pos += 1
            while True:
                if pos >= n:
                    raise DigestError(f"unterminated quoted string in {what}")
                c = rest[pos]
                if c == "\\" and pos + 1 < n:
                    chars.append(rest[pos + 1])
                    pos += 2
                elif c == '"':
                    pos += 1
                    break
                else:
                    chars.append(c)
                    pos += 1
            field_value = "".join(chars)
        else:
            bare = _BARE_VALUE.match(rest, pos)
            if bare is None:
                raise DigestError(f"parameter {_show(name)} in {what} has no value")
            field_value = bare.group()
            pos = bare.end()
        if name in fields:
            raise DigestError(f"duplicate parameter {_show(name)} in {what}")
        fields[name] = field_value
        pos = _skip_space(rest, pos)
        if pos < n and rest[pos] != ",":
            raise DigestError(f"junk after parameter {_show(name)} in {what}")
    return fields


@dataclass(frozen=True, slots=True)
class Challenge:
    """One Digest challenge from a 401 ``WWW-Authenticate`` or 407 ``Proxy-Authenticate``."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    """Canonical spelling when known (``MD5``, ``SHA-256-sess``, ...), else as sent."""
    qop: tuple[str, ...] = ()
    """Offered qop values, lower-cased (``auth``, ``auth-int``); empty = RFC 2069 form."""
    opaque: str | None = None
    stale: bool = False
    """The nonce merely expired: retry with the new one without asking the user."""
    domain: str | None = None

    @property
    def supported(self) -> bool:
        return self.algorithm in SUPPORTED_ALGORITHMS


def parse_challenge(value: str) -> Challenge:
    """Parse one ``WWW-Authenticate``/``Proxy-Authenticate`` value (DigestError if bad)."""
    fields = _parse_fields(value, "challenge")
    if "realm" not in fields:
        raise DigestError("challenge has no realm")
    if not fields.get("nonce"):
        raise DigestError("challenge has no nonce")
    qop = tuple(q for q in (p.strip(" \t").lower() for p in fields.get("qop", "").split(",")) if q)
    return Challenge(
        realm=fields["realm"],
        nonce=fields["nonce"],
        algorithm=_canonical_algorithm(fields.get("algorithm")),
        qop=qop,
        opaque=fields.get("opaque"),
        stale=fields.get("stale", "").lower() == "true",
        domain=fields.get("domain"),
    )


def best_challenge(values: Iterable[str]) -> Challenge:
    """The challenge to answer among a response's header values: the strongest
    supported algorithm (SHA-512-256 over SHA-256 over MD5), the first on a tie.

    Unparseable and unsupported ones are skipped; DigestError if none is left.
    """
    best: Challenge | None = None
    for value in values:
        try:
            challenge = parse_challenge(value)
        except DigestError:
            continue
        if not challenge.supported:
            continue
        if best is None or _rank(challenge.algorithm) > _rank(best.algorithm):
            best = challenge
    if best is None:
        raise DigestError("no usable Digest challenge")
    return best


def _rank(algorithm: str) -> int:
    return _ALGORITHMS[algorithm][1]


@dataclass(frozen=True, slots=True)
class Credentials:
    """A parsed ``Authorization``/``Proxy-Authorization`` Digest value."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: int | None = None
    """Nonce count (from 8 hex digits); set when ``qop`` is."""
    cnonce: str | None = None
    opaque: str | None = None


def parse_authorization(value: str) -> Credentials:
    """Parse an ``Authorization``/``Proxy-Authorization`` value (DigestError if bad)."""
    fields = _parse_fields(value, "credentials")
    for name in ("username", "realm", "nonce", "uri", "response"):
        if name not in fields:
            raise DigestError(f"credentials have no {name}")
    if not _HEX.fullmatch(fields["response"]):
        raise DigestError("credentials response is not hex")
    qop = fields.get("qop")
    nc: int | None = None
    if qop is not None:
        qop = qop.lower()
        raw_nc = fields.get("nc")
        if raw_nc is None or "cnonce" not in fields:
            raise DigestError("credentials with qop need nc and cnonce")
        if not 0 < len(raw_nc) <= 8 or not _HEX.fullmatch(raw_nc):
            raise DigestError(f"bad nonce count {_show(raw_nc)}")
        nc = int(raw_nc, 16)
    return Credentials(
        username=fields["username"],
        realm=fields["realm"],
        nonce=fields["nonce"],
        uri=fields["uri"],
        response=fields["response"].lower(),
        algorithm=_canonical_algorithm(fields.get("algorithm")),
        qop=qop,
        nc=nc,
        cnonce=fields.get("cnonce"),
        opaque=fields.get("opaque"),
    )


def _digest(
    algorithm: str,
    *,
    username: str,
    realm: str,
    password: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None,
    nc: int,
    cnonce: str,
    body: bytes,
) -> str:
    """The ``response`` value (lowercase hex) for the given inputs."""
    hash_name = _ALGORITHMS[algorithm][0]

    def h(data: bytes) -> str:
        return hashlib.new(hash_name, data).hexdigest()

    ha1 = h(f"{username}:{realm}:{password}".encode())
    if algorithm.endswith("-sess"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}".encode())
    if qop == "auth-int":
        ha2 = h(f"{method}:{uri}:{h(body)}".encode())
    else:
        ha2 = h(f"{method}:{uri}".encode())
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}".encode())
    return h(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}".encode())


def _quote(text: str) -> str:
    if "\r" in text or "\n" in text:
        raise DigestError("CR or LF in a Digest value")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def answer_challenge(
    challenge: Challenge | str,
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str | None = None,
    nc: int = 1,
    body: bytes = b"",
) -> str:
    """The ``Authorization``/``Proxy-Authorization`` value answering ``challenge``.

    ``uri`` is the request's Request-URI as sent; ``nc`` counts the uses of this
    nonce (1 for the first request, then 2, 3 ... when a nonce is reused).
    Prefers ``qop=auth``, then ``auth-int`` (over ``body``), then the RFC 2069 form
    when the challenge offers no qop.  ``cnonce`` defaults to 16 random hex digits.
    DigestError for an unsupported algorithm or qop, or a bad ``nc``.
    """
    if isinstance(challenge, str):
        challenge = parse_challenge(challenge)
    if not challenge.supported:
        raise DigestError(f"unsupported digest algorithm {_show(challenge.algorithm)}")
    if not 0 < nc <= 0xFFFFFFFF:
        raise DigestError(f"nonce count {nc} out of range")
    qop: str | None
    if not challenge.qop:
        qop = None
    elif "auth" in challenge.qop:
        qop = "auth"
    elif "auth-int" in challenge.qop:
        qop = "auth-int"
    else:
        raise DigestError(f"no supported qop in {challenge.qop!r}")
    cnonce = secrets.token_hex(8) if cnonce is None else cnonce
    response = _digest(
        challenge.algorithm,
        username=username,
        realm=challenge.realm,
        password=password,
        nonce=challenge.nonce,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc,
        cnonce=cnonce,
        body=body,
    )
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
        f"algorithm={challenge.algorithm}",
    ]
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc:08x}", f"cnonce={_quote(cnonce)}"]
    elif challenge.algorithm.endswith("-sess"):
        parts.append(f"cnonce={_quote(cnonce)}")
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    return "Digest " + ", ".join(parts)


def verify(
    authorization: Credentials | str,
    *,
    method: str,
    password_for: Callable[[str, str], str | None],
    nonce_ok: Callable[[str], bool],
    uri: str | None = None,
    body: bytes = b"",
) -> bool:
    """Check credentials on the server side.

    ``password_for(username, realm)`` returns the password or ``None`` for an
    unknown user; ``nonce_ok(nonce)`` says whether the nonce is one we issued and
    still accept (replay and ``nc`` policy are the caller's).  When ``uri`` is
    given the credentials' ``uri`` must equal it.  Returns False for wrong or
    unknown credentials; raises DigestError when the header is malformed.
    """
    creds = parse_authorization(authorization) if isinstance(authorization, str) else authorization
    if creds.algorithm not in SUPPORTED_ALGORITHMS:
        return False
    if creds.qop not in (None, "auth", "auth-int"):
        return False
    if uri is not None and creds.uri != uri:
        return False
    if not nonce_ok(creds.nonce):
        return False
    password = password_for(creds.username, creds.realm)
    if password is None:
        return False
    expected = _digest(
        creds.algorithm,
        username=creds.username,
        realm=creds.realm,
        password=password,
        nonce=creds.nonce,
        method=method,
        uri=creds.uri,
        qop=creds.qop,
        nc=creds.nc or 0,
        cnonce=creds.cnonce or "",
        body=body,
    )
    return hmac.compare_digest(expected, creds.response)
