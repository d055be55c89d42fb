"""The site's settings make sense: paths, URLs and hosts the browser sees, proxies, consent.

Split from :mod:`capi_bridge.settings_checks` (the account's and delivery's rules) to keep each
short; the same conventions hold: every refusal names the setting as the user wrote it and says
the fix. These rules guard the pages: an endpoint at ``/`` would answer the home page, a cookie
domain on a public suffix would keep every ``_fbp`` from being set, and a proxy list covering
every address would let any visitor choose the IP address sent to Meta.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING

from capi_bridge.cookies import FBC_COOKIE, FBP_COOKIE, is_ip, is_public_suffix
from capi_bridge.settings_checks import check_url, fail, odd_characters

if TYPE_CHECKING:
    from capi_bridge.settings import Settings

_PATH = re.compile(r"/[A-Za-z0-9._~/-]*", re.ASCII)
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.ASCII)
_HOST_LABEL = re.compile(r"[a-z0-9_-]{1,63}", re.ASCII)


def check(settings: Settings) -> None:
    """The site's rules; the first failure raises."""
    for rule in (_check_proxies, _check_paths, _check_browser, _check_consent):
        rule(settings)


def _check_proxies(s: Settings) -> None:
    proxies = s.trusted_proxies
    fix = "give a hop count (e.g. 1 behind one nginx) or your proxies' CIDRs, e.g. 10.0.0.0/8"
    if isinstance(proxies, int):
        if not 0 <= proxies <= 10:
            fail(s, "trusted_proxies", f"{proxies} is not a hop count from 0 to 10", fix)
        return
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for cidr in proxies:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            fail(s, "trusted_proxies", f"{cidr!r} is not an IP network", fix)
    # per address family, after merging (0.0.0.0/1 and 128.0.0.0/1 cover everything too)
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    merged: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
        *ipaddress.collapse_addresses(v4),
        *ipaddress.collapse_addresses(v6),
    ]
    families = sorted({f"IPv{n.version}" for n in merged if n.prefixlen == 0})
    if families and not s.trust_all_proxies:
        fail(
            s,
            "trusted_proxies",
            f"{', '.join(proxies)} covers every {' and '.join(families)} address, so any "
            "visitor could write their own X-Forwarded-For: forge the IP address sent to Meta "
            "and dodge the endpoint's rate limit",
            "list only your proxies' networks; if the app truly cannot be reached but through "
            f"your proxies, say so with {s.name_of('trust_all_proxies')}=true",
        )


def _check_paths(s: Settings) -> None:
    fields = ["endpoint_path", "script_path"] + (["inspector_path"] if s.inspector else [])
    for field in fields + ([] if s.inspector else ["inspector_path"]):
        path = getattr(s, field)
        segments = path.split("/")[1:]
        if not _PATH.fullmatch(path) or "" in segments[:-1] or {".", ".."} & {*segments}:
            fail(
                s,
                field,
                f"{path!r} is not a plain URL path",
                "start it with '/', then letters, digits, '-', '.', '_', '~' and single '/'s "
                "(no query, fragment, spaces, '//' or '..')",
            )
        if path == "/":
            fail(
                s,
                field,
                "'/' is the site's home page",
                f"give capi-bridge a path of its own, e.g. the default {s.default_of(field)}",
            )
    for i, first in enumerate(fields):
        for second in fields[i + 1 :]:
            a, b = (getattr(s, f).rstrip("/") for f in (first, second))
            nested = "inspector_path" in (first, second) and (
                a.startswith(b + "/") or b.startswith(a + "/")
            )
            if a == b or nested:
                fail(
                    s,
                    second,
                    f"collides with {s.name_of(first)} ({getattr(s, first)})",
                    "give each of them its own path, neither inside the other "
                    "(the inspector also serves {path}/data and {path}/diagnostics)",
                )


def _check_browser(s: Settings) -> None:
    check_url(
        s,
        "pixel_script_url",
        query=True,
        fix="leave it unset for Meta's fbevents.js, or give an http(s) URL of a copy",
    )
    domain = s.cookie_domain
    if domain is not None:
        name = domain.lower().strip(".")
        fix = (
            "set your site's registrable domain (e.g. example.com or example.co.uk), or "
            "leave it unset: capi-bridge derives it from each request's host"
        )
        if not all(_LABEL.fullmatch(label) for label in name.split(".")) or len(name) > 253:
            fail(
                s,
                "cookie_domain",
                f"{domain!r} is not a domain name (in xn-- form if it is not ASCII)",
                fix,
            )
        if is_ip(name) or is_public_suffix(name):
            fail(
                s,
                "cookie_domain",
                f"{domain!r} is a public suffix or an IP address; browsers "
                "refuse such a cookie, so _fbp and _fbc would never be set",
                fix,
            )
    for host in s.allowed_hosts:
        name = host.lower()
        if (
            name != "*"
            and not is_ip(name)
            and not all(_HOST_LABEL.fullmatch(label) for label in name.removeprefix(".").split("."))
        ):
            fail(
                s,
                "allowed_hosts",
                f"{host!r} is not a host name",
                "list host names only, no scheme, port or path: shop.example.com, "
                ".example.com for every subdomain, * for any host",
            )
    for name in s.custom_events:
        if len(name) > 50 or odd_characters(name.replace(" ", "")):
            fail(
                s,
                "custom_events",
                f"{name[:60]!r} is not an event name Meta takes",
                "use names of at most 50 characters, without quotes or control characters",
            )


def _check_consent(s: Settings) -> None:
    if s.forwarded_header not in ("x-forwarded-for", "forwarded"):
        fail(
            s,
            "forwarded_header",
            f"{s.forwarded_header!r} is not x-forwarded-for or forwarded",
            "name the one header your proxies write (nginx, ALB, Cloudflare: x-forwarded-for)",
        )
    if s.consent not in ("granted", "required"):
        fail(
            s,
            "consent",
            f"{s.consent!r} is not granted or required",
            "use required when the site asks visitors for consent (a CMP banner), "
            "granted otherwise",
        )
    cookie = s.consent_cookie
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", cookie, re.ASCII):
        fail(
            s,
            "consent_cookie",
            f"{cookie!r} is not a cookie name",
            "use letters, digits, '_' or '-' (the cookie your consent banner sets)",
        )
    if cookie in (FBP_COOKIE, FBC_COOKIE) or cookie.startswith("_capib_"):
        fail(
            s,
            "consent_cookie",
            f"{cookie!r} is a cookie the pixel or capi-bridge writes",
            "name the cookie your consent banner sets, e.g. the default capib_consent",
        )
