"""Which ``Host`` a request may name (``allowed_hosts``, and loopback for the inspector), and
which pages are the site's (``Origin``, ``Referer``, a posted page URL).

Anyone can send any ``Host`` header. Without a list of the site's hosts, a script can fetch a
page with ``Host: competitor.example``, receive a token signed for that host and post
conversions with it; and a DNS-rebinding page (``rebind.attacker.test`` resolving to 127.0.0.1)
can reach a loopback-only tool from a visitor's browser. One rule answers both, Django's:
``allowed_hosts`` lists host names, ``.example.com`` covers the domain and every subdomain,
``*`` any host; an empty list allows every host (start-up warns about it, see
:class:`~capi_bridge.pages.PageBridge`). The inspector further accepts loopback names and
addresses (``localhost``, ``127.0.0.1``, ``[::1]``) only.

Every page asks, so the answer for a host is cached (bounded: sprayed ``Host`` values only evict).
"""

from __future__ import annotations

import functools
import ipaddress
from urllib.parse import urlsplit

from capi_bridge.cookies import split_host
from capi_bridge.signing import normalize_host


def host_name(netloc: str) -> str:
    """The host name of a ``Host`` header or a URL's netloc: lowercase, without user info,
    port, IPv6 brackets or trailing dot; never raises."""
    return split_host(netloc.rpartition("@")[2])


@functools.lru_cache(maxsize=2048)
def _allowed(name: str, allowed: tuple[str, ...]) -> bool:
    for entry in allowed:
        entry = entry.lower()
        if entry == "*" or name == entry.lstrip("."):
            return True
        if entry.startswith(".") and name.endswith(entry):
            return True
    return False


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``allowed`` (``allowed_hosts``) lists ``host``; an empty list allows any."""
    return not allowed or _allowed(host_name(host), allowed)


def listed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``host`` is on the list itself (an empty list lists nothing)."""
    return bool(allowed) and _allowed(host_name(host), allowed)


def is_loopback(host: str) -> bool:
    """``localhost``, a name under ``.localhost`` (RFC 6761), or a loopback address."""
    name = host_name(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.partition("%")[0]).is_loopback
    except ValueError:
        return False


def same_site(netloc: str, host: str, allowed: tuple[str, ...]) -> bool:
    """Whether a page on ``netloc`` is this site: the request's own ``host``, or one of
    ``allowed`` (``allowed_hosts``: ``www.`` and the apex of one shop, say)."""
    return normalize_host(netloc) == normalize_host(host) or listed(netloc, allowed)


def site_url(url: str, host: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``url`` is an http(s) URL of this site; one that does not parse
    (``http://[127.0.0.1:18000``) is not, and raises nothing."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and same_site(parts.netloc, host, allowed)
