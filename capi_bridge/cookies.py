"""Cookie reading and ``Set-Cookie`` building, shared by the identity, snippet and endpoint code.

Cookies are parsed by hand, like Meta's Parameter Builder does, instead of with
:class:`http.cookies.SimpleCookie`: ``SimpleCookie`` drops *every* cookie after the first one it
cannot parse, so one odd third-party cookie on the site would hide ``_fbp`` from us.
Values are taken as sent, without URL-decoding, because the pixel writes them raw.
The cookie domain comes from a small built-in suffix table rather than the Public Suffix List,
which would be a dependency and a data file to keep current for the sake of a handful of hosts.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re

logger = logging.getLogger("capi_bridge.cookies")

#: Meta's browser id and click id cookies (pixel-capi spec §1.6).
FBP_COOKIE = "_fbp"
FBC_COOKIE = "_fbc"
#: Marks the HTML response that carried a page's PageView id; see ``snippet.py``.
PAGE_COOKIE = "_capib_pv"
#: "1" once the visitor granted consent through ``capiBridge.consent(true)``.
CONSENT_COOKIE = "capib_consent"
#: A server event's pixel twin on its way to the next page (see ``twins.py``): the ``__Host-``
#: name on https (no sibling subdomain can set it), the plain one on http.
TWIN_COOKIE = "_capib_ev"
TWIN_COOKIE_HTTPS = "__Host-capib_ev"
#: The scoped test event code of one browser (see ``pages.py``).
TEST_COOKIE = "_capib_test"

#: 90 days, the lifetime the pixel and Meta's docs use for ``_fbp``/``_fbc``.
IDENTITY_MAX_AGE = 90 * 24 * 3600
#: Long enough for a slow page to run its script, short enough not to outlive the page load.
PAGE_COOKIE_MAX_AGE = 120
#: How long a consent choice is remembered (6 months, the usual CMP re-ask interval).
CONSENT_MAX_AGE = 180 * 24 * 3600

# RFC 6265 cookie-octet: visible ASCII except DQUOTE, comma, semicolon and backslash.
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


#: Two-label public suffixes common enough to matter, so ``shop.example.co.uk`` gets its cookie
#: on ``example.co.uk`` (the last line: hosting platforms whose customers each own a subdomain).
#: Not the Public Suffix List: set ``cookie_domain`` for anything else.
_SUFFIXES = """
    co.uk org.uk me.uk ltd.uk plc.uk net.uk ac.uk gov.uk sch.uk com.au net.au org.au edu.au
    gov.au id.au asn.au co.nz org.nz net.nz ac.nz govt.nz geek.nz co.jp ne.jp or.jp ac.jp go.jp
    com.br net.br org.br com.cn net.cn org.cn co.in net.in org.in firm.in gen.in co.za org.za
    net.za co.kr or.kr co.il co.id co.th co.ke co.at or.at com.mx com.ar com.tr com.hk com.sg
    com.tw com.my com.ph com.pk com.ua com.co com.pe com.vn com.eg com.sa com.ng com.pl com.es
    com.cy github.io gitlab.io herokuapp.com vercel.app netlify.app pages.dev web.app
    firebaseapp.com appspot.com azurewebsites.net onrender.com fly.dev cloudfront.net workers.dev
"""
TWO_LEVEL_SUFFIXES = frozenset(_SUFFIXES.split())


def is_public_suffix(domain: str) -> bool:
    """Whether ``domain`` is one browsers refuse a cookie for: a top-level domain (``com``) or
    a suffix of the table (``co.uk``, ``github.io``). The ``cookie_domain`` setting is checked
    with it, and the heuristic below keeps one more label under such a suffix."""
    name = domain.strip().lower().strip(".")
    return "." not in name or name in TWO_LEVEL_SUFFIXES


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address (a cookie cannot be set for a whole one)."""
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


def split_host(host: str) -> str:
    """The host name without port or IPv6 brackets, lowercased, without a trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


@functools.cache
def _warn_uncovered(domain: str) -> None:
    """Once per setting value, not per request: a misconfiguration, not an event."""
    logger.warning("cookie_domain %r does not cover a request host; using the heuristic", domain)


@functools.lru_cache(maxsize=1024)  # a site has a handful of hosts; this runs on every page
def cookie_domain(host: str, override: str | None = None) -> tuple[str | None, int]:
    """``(Domain attribute, subdomain index)`` for first-party cookies on ``host``.

    The index is what the pixel writes into fbp/fbc: labels of the cookie's domain minus one
    (``example.com`` 1, ``example.co.uk`` 2). localhost, single-label and IP hosts get a
    host-only cookie (``None``) and index 0. ``override`` (the ``cookie_domain`` setting) wins
    when ``host`` is inside it.
    """
    name = split_host(host)
    if override:
        domain = override.strip().lower().lstrip(".")
        if name == domain or name.endswith("." + domain):
            return domain, domain.count(".")
        _warn_uncovered(domain)
    if is_ip(name) or "." not in name:
        return None, 0
    labels = name.split(".")
    keep = 3 if is_public_suffix(".".join(labels[-2:])) else 2
    if len(labels) < keep:
        return None, 0
    domain = ".".join(labels[-keep:])
    return domain, domain.count(".")


def parse_cookie_header(header: str | None) -> dict[str, str]:
    """Name to value for a ``Cookie`` header; the first of duplicate names wins.

    Browsers list the most specific cookie first (longest path, then oldest), which is also the
    one ``document.cookie`` readers such as the pixel pick.
    """
    cookies: dict[str, str] = {}
    if not header:
        return cookies
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        cookies.setdefault(name, value)
    return cookies


_GOOD_NAMES: set[str] = set()


def set_cookie(
    name: str,
    value: str,
    *,
    max_age: int,
    domain: str | None = None,
    secure: bool = False,
    http_only: bool = False,
    path: str = "/",
    same_site: str = "Lax",
) -> str:
    """A ``Set-Cookie`` header value; raises ``ValueError`` for a value a browser would mangle.

    ``domain=None`` gives a host-only cookie (localhost, IP hosts). ``SameSite=Lax`` keeps the
    cookie on the top-level navigation that follows an ad click, which is when fbclid arrives.
    """
    if name not in _GOOD_NAMES:
        if not _COOKIE_NAME.fullmatch(name):
            raise ValueError(f"invalid cookie name {name!r}")
        if len(_GOOD_NAMES) < 64:  # our own few names: checked once, not on every page
            _GOOD_NAMES.add(name)
    if not _COOKIE_VALUE.fullmatch(value):
        raise ValueError(f"cookie {name} has characters a browser would not keep")
    parts = [f"{name}={value}", f"Max-Age={int(max_age)}", f"Path={path}"]
    if domain:
        parts.append(f"Domain={domain}")
    parts.append(f"SameSite={same_site}")
    if secure:
        parts.append("Secure")
    if http_only:
        parts.append("HttpOnly")
    return "; ".join(parts)


def expire_cookie(name: str, *, domain: str | None = None, secure: bool = False) -> str:
    """A ``Set-Cookie`` value that deletes ``name`` (same domain and path as when it was set)."""
    return set_cookie(name, "", max_age=0, domain=domain, secure=secure)


def expire_everywhere(name: str, *, domain: str | None, secure: bool) -> list[str]:
    """Delete ``name`` both host-only (as capi-bridge sets it) and on ``domain``: a copy set
    for the parent domain by a sibling subdomain survives a host-only deletion."""
    values = [expire_cookie(name, secure=secure)]
    if domain:
        values.append(expire_cookie(name, domain=domain, secure=secure))
    return values
