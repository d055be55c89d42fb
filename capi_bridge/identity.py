"""The user data only the server knows: client IP, user agent, page URL, ``fbp`` and ``fbc``.

Three mistakes of existing bridges are designed out here (peers spec §3, complaints 4-6):

* **Spoofable IPs.** The client IP is the socket peer unless ``trusted_proxies`` says otherwise,
  and forwarding headers are walked from the right, so a client's own ``X-Forwarded-For``
  entries are never taken for the address the trusted proxy saw.
* **Missing fbp on the first request.** An HTML response without ``_fbp`` mints one in the
  pixel's own format and sets it, so fbevents.js reuses it and both copies of the very first
  event carry the same value.
* **Re-stamped fbc.** A click id seen again keeps its first click time; only a different fbclid
  gets a new ``_fbc`` (Meta's fbp-and-fbc docs).

Before consent no cookie may be written, yet the events held until then must carry the ``fbp``
the pixel will send once the visitor consents. :func:`held_fbp` derives that value from the tab
session's hold id and the site's secret: the same on every held event of the tab, and the one
the consent answer sets as ``_fbp``, so the pixel adopts it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from capi_bridge.cookies import (
    FBC_COOKIE,
    FBP_COOKIE,
    IDENTITY_MAX_AGE,
    cookie_domain,
    set_cookie,
)
from capi_bridge.request import RequestView

logger = logging.getLogger("capi_bridge.identity")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Longest fbclid accepted (Meta's client-side Parameter Builder refuses longer ones).
MAX_FBCLID = 500
_FBCLID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_FBCLID}}}")
# fb.<subdomain index>.<ms>.<payload>[.<appendix>]; the appendix is Meta's Parameter Builder
# version tag: a 2-char language token or 8 base64url characters (meta-sdk spec §2.2).
_APPENDIX = r"(?:\.(?:AQ|Ag|Aw|BA|BQ|Bg|[A-Za-z0-9_-]{8}))?"
_FBP = re.compile(r"fb\.(\d{1,2})\.(\d{12,13})\.(\d{1,24})" + _APPENDIX)
_FBC = re.compile(rf"fb\.(\d{{1,2}})\.(\d{{12,13}})\.([A-Za-z0-9_-]{{1,{MAX_FBCLID}}})" + _APPENDIX)


class _IdentitySettings(Protocol):
    """The slice of :class:`~capi_bridge.settings.Settings` this module reads."""

    @property
    def trusted_proxies(self) -> int | tuple[str, ...]: ...
    @property
    def cookie_domain(self) -> str | None: ...


@functools.lru_cache(maxsize=4096)  # proxies and returning visitors repeat; ~5 µs a parse
def parse_ip(raw: str | None) -> IPAddress | None:
    """An address from a forwarding-header entry or peer: ports, brackets, zone ids and the
    ``::ffff:`` IPv4-mapped prefix removed; ``None`` for ``unknown``, obfuscated ids or junk."""
    if not raw:
        return None
    text = raw.strip().strip('"').strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    text = text.partition("%")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=4096)  # ipaddress walks a list of networks for each answer
def _private(ip: IPAddress) -> bool:
    return ip.is_private


@functools.lru_cache(maxsize=4096)
def _global_text(ip: IPAddress) -> str | None:
    """The address as text when it is public (what Meta accepts), else None."""
    return str(ip) if ip.is_global else None


def _split_outside_quotes(value: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _forwarded_params(header: str) -> list[dict[str, str]]:
    """RFC 7239 ``Forwarded`` elements as dicts (``for``, ``proto``...), left to right."""
    elements = []
    for element in _split_outside_quotes(header, ","):
        params: dict[str, str] = {}
        for pair in _split_outside_quotes(element, ";"):
            key, sep, value = pair.partition("=")
            if sep:
                params[key.strip().lower()] = value.strip().strip('"')
        elements.append(params)
    return elements


class TrustedProxies:
    """Which forwarding hops to believe; built once from ``settings.trusted_proxies``.

    * ``0`` (default): no proxy; the socket peer is the client and headers are ignored.
    * ``N``: exactly N proxies append to the header; the client is the (N+1)-th address from
      the right of ``header entries + [peer]``. Entries further left were sent by the client.
    * CIDRs: the peer must be inside one of them before any header is read; then entries are
      walked right to left, skipping trusted networks; the first other address is the client.

    ``header`` is the one header your proxies write: ``"x-forwarded-for"`` (nginx, AWS ALB,
    Google LB, Cloudflare) or ``"forwarded"`` (RFC 7239). Reading only that one matters: a
    proxy that appends to X-Forwarded-For leaves a client-sent ``Forwarded`` untouched.
    """

    def __init__(self, trusted: int | Sequence[str] = 0, *, header: str = "x-forwarded-for"):
        if header.lower() not in ("x-forwarded-for", "forwarded"):
            raise ValueError("header must be 'x-forwarded-for' or 'forwarded'")
        self.header = header.lower()
        self.hops = trusted if isinstance(trusted, int) else 0
        self.networks = (
            ()
            if isinstance(trusted, int)
            else tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in trusted)
        )

    @classmethod
    def from_settings(
        cls, settings: _IdentitySettings, *, header: str | None = None
    ) -> TrustedProxies:
        chosen = header or str(getattr(settings, "forwarded_header", "x-forwarded-for"))
        return cls(settings.trusted_proxies, header=chosen)

    def _trusts(self, ip: IPAddress | None) -> bool:
        return ip is not None and any(ip in net for net in self.networks)

    def _peer_trusted(self, request: RequestView) -> bool:
        if self.hops:
            return True
        return bool(self.networks) and self._trusts(parse_ip(request.client_addr))

    def _entries(self, request: RequestView) -> list[str]:
        value = request.headers.get(self.header)
        if not value:
            return []
        if self.header == "forwarded":
            return [params.get("for", "") for params in _forwarded_params(value)]
        return [entry.strip() for entry in value.split(",")]

    def client_ip(self, request: RequestView) -> IPAddress | None:
        """The client's address as the outermost trusted proxy saw it (``None`` if unknown)."""
        peer = parse_ip(request.client_addr)
        if not self._peer_trusted(request):
            behind_proxy = peer is not None and _private(peer) and request.headers.get(self.header)
            if behind_proxy and not self.hops and not self.networks:
                _warn_untrusted_proxy()
            return peer
        entries = self._entries(request)
        if self.hops:
            chain = [*entries, request.client_addr or ""]
            return parse_ip(chain[max(len(chain) - 1 - self.hops, 0)])
        for raw in reversed(entries):
            ip = parse_ip(raw)
            if ip is None:
                return None  # a hop we cannot read: nothing to its left can be trusted
            if not self._trusts(ip):
                return ip
        return parse_ip(entries[0]) if entries else peer

    def scheme(self, request: RequestView) -> str:
        """``https`` when a trusted proxy says the client used it (TLS ends at the proxy)."""
        if self._peer_trusted(request):
            proto = request.headers.get("x-forwarded-proto")
            if proto is None and self.header == "forwarded" and request.headers.get("forwarded"):
                proto = _forwarded_params(request.headers["forwarded"])[-1].get("proto")
            if proto:
                last = proto.split(",")[-1].strip().lower()
                if last in ("http", "https"):
                    return last
        return request.scheme


@functools.cache
def _warn_untrusted_proxy() -> None:
    logger.warning(
        "requests arrive through a proxy but trusted_proxies is 0: every visitor gets the "
        "proxy's address (and shares its rate limit); set CAPI_BRIDGE_TRUSTED_PROXIES"
    )


def valid_fbp(value: str | None) -> bool:
    """Whether ``value`` is a well-formed ``_fbp`` (pixel or Parameter Builder format)."""
    return bool(value) and _FBP.fullmatch(value or "") is not None


def parse_fbc(value: str | None) -> str | None:
    """The click id inside a well-formed ``_fbc`` value, else ``None``."""
    match = _FBC.fullmatch(value or "")
    return match.group(3) if match else None


def valid_fbclid(value: str | None) -> bool:
    """A usable fbclid: not blank, at most 500 URL-safe characters (case is significant)."""
    return value is not None and _FBCLID.fullmatch(value) is not None


def held_fbp(secret_key: str, hold: str, index: int, created_ms: int) -> str:
    """The ``fbp`` of a visitor whose events are held under ``hold`` (no cookie may be set yet):
    in the pixel's format, dated ``created_ms``, its random part derived from the hold id with
    the site's secret (nobody without the secret can link the two)."""
    digest = hmac.new(secret_key.encode(), b"capi-bridge.held-fbp:" + hold.encode(), hashlib.sha256)
    return f"fb.{index}.{created_ms}.{int.from_bytes(digest.digest()[:8], 'big') % 10**18}"


def _fbclid_from(url: str | None) -> str | None:
    if not url or "fbclid" not in url:  # most pages: no query to parse
        return None
    try:
        values = parse_qs(urlsplit(url).query, keep_blank_values=True).get("fbclid")
    except ValueError:
        return None
    return values[0] if values else None


@dataclasses.dataclass(frozen=True)
class Identity:
    """Server-known user data for one request, plus the ``Set-Cookie`` values to send."""

    client_ip_address: str | None = None
    client_user_agent: str | None = None
    event_source_url: str | None = None
    referrer_url: str | None = None
    fbp: str | None = None
    fbc: str | None = None
    cookies: tuple[str, ...] = ()

    def user_data(self) -> dict[str, str]:
        """The raw ``user_data`` keys this identity fills (none of them is hashed)."""
        fields = {
            "client_ip_address": self.client_ip_address,
            "client_user_agent": self.client_user_agent,
            "fbp": self.fbp,
            "fbc": self.fbc,
        }
        return {key: value for key, value in fields.items() if value}


def _cap(value: str | None, limit: int) -> str | None:
    value = (value or "").strip()
    return value[:limit] if value else None


def resolve_identity(
    request: RequestView,
    settings: _IdentitySettings,
    *,
    proxies: TrustedProxies | None = None,
    now_ms: int | None = None,
    consent: bool = True,
    write_cookies: bool = False,
    mint: bool = True,
    page_url: str | None = None,
    page_referrer: str | None = None,
    fallback_fbp: str | None = None,
) -> Identity:
    """The identity of ``request``'s visitor.

    ``write_cookies`` is for HTML page responses: a missing ``_fbp`` is minted and set, a new
    fbclid becomes ``_fbc``, and existing cookies are re-set with a fresh 90-day Max-Age from
    the server (Safari caps script-written cookies at 7 days; server-set ones it does not).
    Without ``write_cookies`` nothing is minted, because an fbp that is not stored would be a
    new "browser" on every event; ``mint=False`` only refreshes cookies that already exist.
    With ``consent=False`` no cookie is ever written.
    ``page_url`` and ``page_referrer`` replace the request's URL and Referer (the mirror
    endpoint passes the page's own: a click id is looked for in the page URL, then in the
    page's referrer, as the pixel does); ``now_ms`` is the click time given to a new fbc
    (default: now); ``fallback_fbp`` is the value used (and set) instead of a random one when the
    request has no valid ``_fbp`` (see :func:`held_fbp`).
    """
    proxies = proxies or TrustedProxies.from_settings(settings)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    ip = proxies.client_ip(request)
    # Meta rejects private/loopback addresses as invalid; better none than wrong
    address = None if ip is None else _global_text(ip)
    scheme = proxies.scheme(request)
    query = f"?{request.query_string}" if request.query_string else ""
    url = page_url or f"{scheme}://{request.host}{request.path}{query}"
    referrer = _cap(page_referrer or request.headers.get("referer"), 2048)
    domain, index = cookie_domain(request.host, settings.cookie_domain)
    writing = write_cookies and consent
    minting = writing and mint
    cookies: list[str] = []

    def keep(name: str, value: str) -> None:
        if writing:
            cookies.append(
                set_cookie(
                    name, value, max_age=IDENTITY_MAX_AGE, domain=domain, secure=scheme == "https"
                )
            )

    fbp = request.cookies.get(FBP_COOKIE)
    if not valid_fbp(fbp):
        fbp = fallback_fbp or (
            f"fb.{index}.{now_ms}.{secrets.randbelow(10**18)}" if minting else None
        )
    if fbp:
        keep(FBP_COOKIE, fbp)

    fbc = request.cookies.get(FBC_COOKIE)
    clicked = parse_fbc(fbc)
    fbclid = _fbclid_from(url) or _fbclid_from(referrer)
    if valid_fbclid(fbclid) and fbclid != clicked and (mint or not writing):
        fbc = f"fb.{index}.{now_ms}.{fbclid}"  # a new click; the same click keeps its time
        if minting:
            keep(FBC_COOKIE, fbc)
    elif clicked is None:
        fbc = None
    elif fbc:
        keep(FBC_COOKIE, fbc)

    return Identity(
        client_ip_address=address,
        client_user_agent=_cap(request.headers.get("user-agent"), 1024),
        event_source_url=url[:2048],
        referrer_url=referrer,
        fbp=fbp,
        fbc=fbc,
        cookies=tuple(cookies),
    )
