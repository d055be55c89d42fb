"""The live inspector: every event's two copies side by side, as capi-bridge saw them.

``GET {inspector_path}`` is one self-contained HTML page (inline CSS and JS under a per-response
CSP nonce, no external asset) that polls ``{inspector_path}/data`` (JSON rows, see
:mod:`capi_bridge.inspector_rows`) twice a second and ``{inspector_path}/diagnostics`` (see
:mod:`capi_bridge.diagnostics`) now and then. It exists only with ``settings.inspector``.

Who may look: it shows masked identifiers and what a site's visitors do, so it answers

* a client whose socket peer is loopback, whose request carries no forwarding header and names
  a loopback ``Host`` (``localhost``, ``127.0.0.1``, ``[::1]``) or one of ``allowed_hosts``: a
  reverse proxy on the same host makes every visitor look like loopback, but it adds
  ``X-Forwarded-For`` (or ``Forwarded``, ``Via``...), so proxied requests are refused; and a
  page on ``rebind.attacker.test`` whose name the attacker re-points at 127.0.0.1 (DNS
  rebinding) reaches the loopback socket from a visitor's browser, but with its own name as
  ``Host``, so it is refused too; or
* anyone holding a signed link (``?key=``, made by ``capi-bridge inspector-link URL`` with the
  site's ``secret_key``): expiring, bound to the site's host, useless once tampered with.

Everything else gets 403 with the reason and the way in. Forwarding headers are never used to
decide who the client is.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from capi_bridge.drops import DropTally
from capi_bridge.drops import read as read_drops
from capi_bridge.hosts import host_allowed, is_loopback, listed
from capi_bridge.inspector_rows import build_rows, group
from capi_bridge.request import RequestView, Response
from capi_bridge.settings import Settings
from capi_bridge.signing import INSPECTOR_SALT, SignedValues, normalize_host

if TYPE_CHECKING:
    from capi_bridge.bridge import Bridge

logger = logging.getLogger("capi_bridge.inspector")

LINK_PARAM = "key"
#: Longest lifetime a signed link may be given.
LINK_MAX_AGE = 7 * 86400
DEFAULT_LINK_SECONDS = 3600
#: Headers a proxy adds: their presence means the socket peer is not the client.
FORWARDING_HEADERS = (
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "via",
)
#: Rows shown, and how many recent observations they are paired from.
ROW_LIMIT = 100
SCAN_LIMIT = 3000
#: The browser events not mirrored (ignored, refused) that the page lists: the last day's.
DROPS_WINDOW = 86400.0
_WINDOW_LIMITS = (60.0, 7 * 86400.0)


@functools.cache
def _page_template() -> str:
    return (resources.files("capi_bridge") / "static" / "inspector.html").read_text("utf-8")


def make_inspector_link(
    secret_key: str,
    url: str,
    *,
    path: str = "/capi-bridge/inspector",
    seconds: float = DEFAULT_LINK_SECONDS,
    now: float | None = None,
) -> str:
    """A link to the inspector of the site at ``url`` that works from anywhere for ``seconds``
    (at most a week). ``url`` may be the site's root or the inspector's own URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL of the site")
    seconds = min(float(seconds), LINK_MAX_AGE)
    expires = (time.time() if now is None else now) + seconds
    token = SignedValues(secret_key, INSPECTOR_SALT).dumps(
        {"h": normalize_host(parts.netloc), "x": int(expires)}
    )
    where = parts.path if parts.path not in ("", "/") else path
    return f"{parts.scheme}://{parts.netloc}{where}?{LINK_PARAM}={token}"


class Inspector:
    """Serves the inspector's page and JSON; built by ``PageBridge`` when enabled."""

    def __init__(
        self,
        settings: Settings,
        bridge: Bridge,
        *,
        drops: DropTally | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``drops``: the counts of browser events the mirror did not store (this process's
        are written before each read)."""
        assert settings.secret_key  # PageSigner refused to start without one
        self.settings = settings
        self.bridge = bridge
        self.page_path = settings.inspector_path.rstrip("/") or "/"
        base = self.page_path.rstrip("/")
        self.data_path = f"{base}/data"
        self.diagnostics_path = f"{base}/diagnostics"
        self.paths = frozenset({self.page_path, self.data_path, self.diagnostics_path})
        self._links = SignedValues(settings.secret_key, INSPECTOR_SALT)
        self._drops = drops
        self._clock = clock

    def handles(self, path: str) -> bool:
        return path in self.paths

    def handle(self, request: RequestView) -> Response:
        """Answer one inspector request; never raises."""
        if request.method not in ("GET", "HEAD"):
            return _error(405, "method_not_allowed", "use GET", headers=[("Allow", "GET, HEAD")])
        refusal = self.refusal(request)
        if refusal is not None:
            return _error(403, *refusal)
        try:
            if request.path == self.data_path:
                return Response.json(200, self.data())
            if request.path == self.diagnostics_path:
                return Response.json(200, self.diagnostics(request.query_param("window")))
            return self.page()
        except self.bridge.outbox.errors as exc:
            logger.warning("inspector: the outbox cannot be read: %s", exc)
            return _error(503, "unavailable", f"the outbox cannot be read now ({exc})")

    # --- access -------------------------------------------------------------------------------

    def refusal(self, request: RequestView) -> tuple[str, str] | None:
        """Why ``request`` may not see the inspector (code, message), or None."""
        key = request.query_param(LINK_PARAM)
        allowed, hosts = self.settings.allowed_hosts, self.settings.name_of("allowed_hosts")
        if key is not None and not host_allowed(request.host, allowed):
            return ("host_not_allowed", f"this site does not answer for this Host ({hosts})")
        if key is not None:
            claims = self._links.loads(key, LINK_MAX_AGE)
            if (
                not isinstance(claims, dict)
                or not isinstance(claims.get("x"), int)
                or claims.get("h") != normalize_host(request.host)
            ):
                return (
                    "link_invalid",
                    "this inspector link is not valid for this site (altered, or signed with "
                    "another secret key); print one with `capi-bridge inspector-link URL`",
                )
            if claims["x"] < self._clock():
                return (
                    "link_expired",
                    "this inspector link has expired; print a new one with "
                    "`capi-bridge inspector-link URL`",
                )
            return None
        try:
            peer = ipaddress.ip_address((request.client_addr or "").partition("%")[0])
        except ValueError:
            peer = None
        if peer is None or not peer.is_loopback:
            return (
                "not_loopback",
                "the inspector answers loopback clients only: open it on the server itself "
                "(e.g. through `ssh -L`), or use a signed link from `capi-bridge inspector-link "
                "URL`",
            )
        if not (is_loopback(request.host) or listed(request.host, allowed)):
            return (
                "host_not_allowed",
                "the inspector answers a loopback Host (localhost, 127.0.0.1, [::1]) or one of "
                f"{hosts} only: another name on a loopback socket is how a DNS-rebinding page "
                "would read it",
            )
        proxied = next((h for h in FORWARDING_HEADERS if h in request.headers), None)
        if proxied is not None:
            return (
                "proxied",
                f"the request came through a proxy ({proxied} header), so its loopback address "
                "is the proxy's, not the visitor's; use a signed link from `capi-bridge "
                "inspector-link URL`",
            )
        return None

    # --- content ------------------------------------------------------------------------------

    def page(self) -> Response:
        nonce = secrets.token_urlsafe(16)
        body = _page_template().replace("__NONCE__", nonce).encode("utf-8")
        csp = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        )
        return Response(
            200,
            (
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("Content-Security-Policy", csp),
                ("Referrer-Policy", "no-referrer"),
                ("X-Content-Type-Options", "nosniff"),
                ("X-Frame-Options", "DENY"),
            ),
            body,
        )

    def data(self) -> dict[str, Any]:
        """The newest rows, paired and flagged, plus the outbox's counts."""
        self.bridge.write_observations()  # pixel twins noted by this process's pages
        now = self._clock()
        outbox = self.bridge.outbox
        groups = group(outbox.recent(SCAN_LIMIT), ROW_LIMIT)
        rows = build_rows(groups, lambda keys: outbox.outcomes(keys, now), now)
        stats = self.bridge.stats()
        if self._drops is not None:
            self._drops.flush()
        dropped = read_drops(outbox, now - DROPS_WINDOW, now)
        return {
            "now": now,
            "pixels": list(self.settings.pixel_ids),
            "rows": rows,
            "dropped": [count.as_dict() for count in dropped],
            "outbox": {
                "pending": stats.pending,
                "in_flight": stats.in_flight,
                "retrying": stats.retrying,
                "delivered": stats.delivered,
                "dead": stats.dead,
                "held": stats.held,
            },
            "clock": None if stats.clock is None else stats.clock.as_dict(),
        }

    def diagnostics(self, raw_window: str | None) -> dict[str, Any]:
        try:
            window = float(raw_window) if raw_window else 86400.0
        except ValueError:
            window = 86400.0
        window = min(max(window, _WINDOW_LIMITS[0]), _WINDOW_LIMITS[1])
        if self._drops is not None:
            self._drops.flush()
        return self.bridge.diagnostics(window).as_dict()


def _error(
    status: int, code: str, message: str, *, headers: list[tuple[str, str]] | None = None
) -> Response:
    return Response.json(
        status, {"error": {"code": code, "message": message, "field": None}}, headers=headers or ()
    )
