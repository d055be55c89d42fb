"""Pixel twins of server events: carried to the next page this browser renders, fired once.

A server event (``track()`` in a form post: a confirmed payment) has its pixel copy fired by the
next HTML page the browser renders, ``fbq('track', name, data, {eventID})`` with the same id, so
Meta deduplicates the pair instead of counting it twice. The twin travels in a signed cookie that
lives ten minutes. A signature alone is not enough: anyone can get a validly signed twin cookie
from their own session, and a sibling subdomain can set it on a victim for the parent domain
(``Domain=example.com``), where a host-only deletion never removes it, so every page of the
victim would fire the attacker's Purchase. The twin cookie is therefore

* **bound to the browser**: it carries a hash of the ``_fbp`` the tracking request had (or was
  given); a page whose browser has another ``_fbp`` ignores it;
* **single-use**: each process remembers the twin ids it fired (bounded, for the cookie's
  lifetime) and never fires one twice, and the page that fires it deletes the cookie both
  host-only and on the cookie domain (a planted parent-domain copy included);
* **``__Host-capib_ev`` on https**: browsers refuse a ``__Host-`` cookie that has a ``Domain``
  or lacks ``Secure``, so no other host can set it; the plain name is then ignored (and deleted);
* **deleted when the visitor withdraws consent** (:mod:`capi_bridge.consent`).

Per page, nothing is added unless a twin cookie arrives: then the signature check there always
was, one SHA-256 of ``_fbp`` and one look-up in the fired set.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from capi_bridge.bounded import Recent
from capi_bridge.cookies import TWIN_COOKIE, TWIN_COOKIE_HTTPS, expire_everywhere, set_cookie
from capi_bridge.signing import PENDING_EVENTS_SALT, SignedValues
from capi_bridge.snippet import script_json

#: How long a twin waits for the next page.
TWIN_MAX_AGE = 600
#: At most this many twins wait for a page; custom_data larger than this is left out of the
#: pixel copy (the server copy keeps it), so the cookie stays far below browsers' 4 KB limit.
TWIN_LIMIT = 4
TWIN_DATA_BYTES = 600

#: A waiting twin: ``{"n": event name, "i": event id, "d": custom data}``.
Twin = dict[str, Any]


def twin_cookie(secure: bool) -> str:
    """The twin cookie's name on a page served over https (``secure``) or http."""
    return TWIN_COOKIE_HTTPS if secure else TWIN_COOKIE


def _binding(fbp: str | None) -> str:
    return hashlib.sha256(b"capi-bridge.twin:" + (fbp or "").encode()).hexdigest()[:16]


class Twins:
    """The app's twin cookies: made, read, fired once; one per app (thread-safe)."""

    def __init__(self, secret_key: str, *, clock: Callable[[], float] = time.time) -> None:
        self._signed = SignedValues(secret_key, PENDING_EVENTS_SALT)
        self._fired: Recent[float] = Recent()
        self._clock = clock

    def carry(self, twins: list[Twin], *, fbp: str | None, secure: bool) -> str:
        """The ``Set-Cookie`` value carrying ``twins`` (the newest :data:`TWIN_LIMIT`) to the
        next page of the browser whose ``_fbp`` is ``fbp``."""
        value = self._signed.dumps({"b": _binding(fbp), "e": twins[-TWIN_LIMIT:]})
        name = twin_cookie(secure)
        return set_cookie(name, value, max_age=TWIN_MAX_AGE, secure=secure, http_only=True)

    def arriving(self, cookies: Mapping[str, str], *, fbp: str | None, secure: bool) -> list[Twin]:
        """The twins this request's cookie carries for this browser (signed, unexpired, bound
        to ``fbp``); some may have fired already (see :meth:`fire`)."""
        raw = cookies.get(twin_cookie(secure))
        if raw is None:
            return []
        data = self._signed.loads(raw, TWIN_MAX_AGE)
        if not isinstance(data, dict) or data.get("b") != _binding(fbp):
            return []
        found = data.get("e")
        return [
            e
            for e in (found if isinstance(found, list) else [])
            if isinstance(e, dict)
            and isinstance(e.get("n"), str)
            and isinstance(e.get("i"), str)
            and isinstance(e.get("d"), dict)
        ]

    def fire(self, twins: list[Twin]) -> list[Twin]:
        """The twins of ``twins`` never fired before by this process; they count as fired now."""
        now = self._clock()

        def first(fired_at: float | None) -> tuple[float, bool]:
            if fired_at is not None and now - fired_at <= TWIN_MAX_AGE:
                return fired_at, False
            return now, True

        return [twin for twin in twins if self._fired.change(twin["i"], first)]

    def clear(
        self, cookies: Mapping[str, str], *, secure: bool, domain: str | None
    ) -> list[str]:
        """``Set-Cookie`` values deleting every twin cookie the request carried (host-only and
        on ``domain``; the ``__Host-`` one has no domain)."""
        values: list[str] = []
        if secure and TWIN_COOKIE_HTTPS in cookies:
            values.extend(expire_everywhere(TWIN_COOKIE_HTTPS, domain=None, secure=True))
        if TWIN_COOKIE in cookies:  # http's, or a plain copy planted on an https site
            values.extend(expire_everywhere(TWIN_COOKIE, domain=domain, secure=secure))
        return values


def pixel_data(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """The custom_data a twin carries: all of it, unless it would bloat the cookie."""
    if not data:
        return {}
    out = dict(data)
    if len(script_json(out)) > TWIN_DATA_BYTES:
        return {k: out[k] for k in ("value", "currency", "content_type") if k in out}
    return out
