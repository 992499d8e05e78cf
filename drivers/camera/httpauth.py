"""HTTP authentication of a camera, answered only when the camera asks (a 401 with ``WWW-Authenticate``).

Credentials are never sent on a first request: a camera that wants them says
how, and Digest (RFC 7616: MD5 and SHA-256, plain or ``-sess``; qop ``auth``,
``auth-int`` for a GET, or none as RFC 2069) is preferred to Basic, which puts
the password on the wire in clear over http://. Pure: no socket, no clock;
the client nonce is drawn from :mod:`secrets`.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import urllib.parse
from dataclasses import dataclass, field

_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # an RFC 9110 token
_ITEM = re.compile(rf"""[\s,]*({_TCHARS})(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*))?[\s,]*""")
_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


class BasicInClear(Exception):
    """The camera offers only Basic (or nothing else the agent speaks) on a plain http:// connection: answering
    would put the user and password on the wire in clear, to whoever answered the request."""


class AuthUnsupported(Exception):
    """The camera asks for an authentication the agent does not speak (the schemes it named are in the message)."""

    def __init__(self, schemes: list[str]) -> None:
        self.schemes = schemes
        super().__init__(", ".join(schemes) if schemes else "no scheme named")


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case
    params: dict[str, str] = field(default_factory=dict)  # names in lower case, values unquoted


def challenges(values: list[str]) -> list[Challenge]:
    """The challenges of ``WWW-Authenticate`` header values (several per value, comma-separated)."""
    found: list[Challenge] = []
    for value in values:
        pos = 0
        current: Challenge | None = None
        while pos < len(value):
            match = _ITEM.match(value, pos)
            if match is None or match.end() == pos:
                break  # a token68 or junk: what was read so far stands
            pos = match.end()
            name, raw = match.group(1), match.group(2)
            if raw is None:  # a bare token: a new challenge's scheme (its params follow after a space)
                current = Challenge(name.lower(), {})
                found.append(current)
                continue
            if raw.startswith('"'):
                if not re.fullmatch(r'"(?:[^"\\]|\\.)*"', raw):  # an unterminated quoted value: not cut short
                    if current is not None:
                        found.remove(current)
                    break
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            if current is not None:
                current.params.setdefault(name.lower(), raw)
    return found


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def digest(challenge: Challenge, user: str, password: str, method: str, uri: str, cnonce: str | None = None) -> str:
    """The ``Authorization`` value answering a Digest challenge (RFC 7616 section 3.4)."""
    params = challenge.params
    algorithm = params.get("algorithm", "MD5").upper()
    sess = algorithm.endswith("-SESS")
    hash_name = algorithm[: -len("-SESS")] if sess else algorithm
    if hash_name not in _HASHES or "nonce" not in params:
        raise AuthUnsupported([f"Digest algorithm={params.get('algorithm', 'MD5')}"])
    new = _HASHES[hash_name]

    def h(text: str) -> str:
        return new(text.encode()).hexdigest()

    def wire(text: str) -> bytes:  # a challenge's value as its bytes on the wire (the head is read as Latin-1)
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            return text.encode()

    def hb(*pieces: bytes) -> str:
        return new(b":".join(pieces)).hexdigest()

    realm, nonce = params.get("realm", ""), params["nonce"]
    offered = [q.strip().lower() for q in params.get("qop", "").split(",") if q.strip()]
    if offered and "auth" not in offered and "auth-int" not in offered:
        raise AuthUnsupported([f"Digest qop={params['qop']}"])
    qop = "auth" if "auth" in offered else ("auth-int" if offered else None)
    if sess and qop is None:  # its cnonce would be hashed but never sent (it goes with a qop only)
        raise AuthUnsupported([f"Digest algorithm={params.get('algorithm')} without qop"])
    cnonce = cnonce or secrets.token_hex(16)
    nc = "00000001"
    ha1 = hb(user.encode(), wire(realm), password.encode())  # the realm's own bytes, UTF-8 or Latin-1
    if sess:
        ha1 = hb(ha1.encode(), wire(nonce), cnonce.encode())
    ha2 = h(f"{method}:{uri}") if qop != "auth-int" else h(f"{method}:{uri}:{h('')}")  # a GET has no body
    n = wire(nonce)
    response = (hb(ha1.encode(), n, nc.encode(), cnonce.encode(), qop.encode(), ha2.encode()) if qop
                else hb(ha1.encode(), n, ha2.encode()))
    userhash = params.get("userhash", "").lower() == "true"
    if userhash:
        name = f"username={_quote(hb(user.encode(), wire(realm)))}"
    elif user.isascii():
        name = f"username={_quote(user)}"
    else:  # RFC 7616 section 3.4.4: a name a quoted string cannot carry
        name = "username*=UTF-8''" + urllib.parse.quote(user, safe="")
    fields = [
        name,
        f"realm={_quote(realm)}",
        f"nonce={_quote(nonce)}",
        f"uri={_quote(uri)}",
        f"algorithm={params.get('algorithm', 'MD5')}",
        f"response={_quote(response)}",
    ]
    if qop:
        fields += [f"qop={qop}", f"nc={nc}", f"cnonce={_quote(cnonce)}"]
    if "opaque" in params:
        fields.append(f"opaque={_quote(params['opaque'])}")
    if userhash:
        fields.append("userhash=true")
    return "Digest " + ", ".join(fields)


def answer(
    values: list[str], user: str, password: str, method: str, uri: str, *, tls: bool = False,
    allow_basic_over_http: bool = False,
) -> tuple[str, str]:
    """(scheme, ``Authorization`` value) for the best challenge offered: Digest SHA-256, Digest MD5, then Basic.

    Basic only over TLS, or when the camera's config opts in (``allow_basic_over_http``): :class:`BasicInClear`
    else. :class:`AuthUnsupported` when none of them can be answered."""
    offered = challenges(values)
    digests = [c for c in offered if c.scheme == "digest"]

    def rank(c: Challenge) -> int:
        algorithm = c.params.get("algorithm", "MD5").upper()
        return 0 if algorithm.startswith("SHA-256") else 1

    unsupported: list[str] = []
    for challenge in sorted(digests, key=rank):
        try:
            return "Digest", digest(challenge, user, password, method, uri)
        except AuthUnsupported as exc:
            unsupported += exc.schemes
    if any(c.scheme == "basic" for c in offered):
        if not tls and not allow_basic_over_http:
            raise BasicInClear(", ".join([*unsupported, "Basic"]))
        return "Basic", basic(user, password)
    names = unsupported + [c.scheme.capitalize() for c in offered if c.scheme not in ("digest", "basic")]
    raise AuthUnsupported(names)
