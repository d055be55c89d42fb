"""The consent rule, in one place: the page renderer, the mirror endpoint and ``PageBridge`` all
ask the same :class:`ConsentPolicy`, so a page, its mirror posts and its server events can never
disagree on whether a visitor consented (pixel-capi spec §5.3: "use the same logic").

Consent is decided by the server from the request (the consent cookie, or the app's own
``consent_check``), never from a flag the browser sends. The one thing the browser says is the
visitor's *choice* (``capiBridge.consent(true|false)``), which the endpoint records as the consent
cookie; :meth:`ConsentPolicy.after_choice` says what that choice amounts to under the policy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

from capi_bridge.cookies import (
    CONSENT_COOKIE,
    CONSENT_MAX_AGE,
    FBC_COOKIE,
    FBP_COOKIE,
    PAGE_COOKIE,
    TEST_COOKIE,
    TWIN_COOKIE,
    TWIN_COOKIE_HTTPS,
    expire_cookie,
    expire_everywhere,
    set_cookie,
)
from capi_bridge.request import RequestView

#: An app's own consent decision for a request (its CMP's cookie, a user preference...).
ConsentCheck = Callable[[RequestView], bool]


class _ConsentSettings(Protocol):
    @property
    def consent_required(self) -> bool: ...
    @property
    def consent_cookie(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class ConsentPolicy:
    """Whether a visitor's events may be sent and cookies set.

    ``check``, the app's own consent logic, decides alone when given (so an app passing one
    cannot forget to also turn ``required`` on). Otherwise ``required=False`` (no consent
    banner on the site) always allows, and ``required=True`` needs the ``cookie`` (set by
    ``capiBridge.consent(true)`` or the site's banner) to be ``1``.
    """

    required: bool = False
    cookie: str = CONSENT_COOKIE
    check: ConsentCheck | None = None

    @classmethod
    def from_settings(
        cls,
        settings: _ConsentSettings,
        check: ConsentCheck | None = None,
        *,
        required: bool | None = None,
    ) -> ConsentPolicy:
        """The site's policy: ``settings.consent`` and ``settings.consent_cookie``, the app's
        ``check`` when it has one; ``required`` overrides the setting (tests, one-off pages)."""
        return cls(
            required=settings.consent_required if required is None else required,
            cookie=settings.consent_cookie,
            check=check,
        )

    @property
    def asks(self) -> bool:
        """Whether visitors may be without consent (so events may be held and released)."""
        return self.required or self.check is not None

    def allows(self, request: RequestView) -> bool:
        """Whether this request's visitor allows events to be sent and cookies to be set."""
        if self.check is not None:
            return bool(self.check(request))
        return not self.required or request.cookies.get(self.cookie) == "1"

    def after_choice(self, request: RequestView, granted: bool) -> bool:
        """Whether the visitor counts as consenting once ``granted`` is recorded: the choice
        itself under the cookie rule; the app's ``check`` still has the last word (a refusal
        always wins)."""
        if not granted:
            return False
        return bool(self.check(request)) if self.check is not None else True

    def choice_cookies(
        self, granted: bool, *, domain: str | None, secure: bool
    ) -> list[tuple[str, str]]:
        """``Set-Cookie`` headers recording a choice: the consent cookie for six months, or, on
        withdrawal, the choice forgotten along with everything it allowed: the identifiers,
        the page marker, a server event's pixel twin still waiting for a page (host-only and on
        the cookie domain, ``__Host-`` on https) and a scoped test code."""
        if granted:
            values = [
                set_cookie(
                    self.cookie,
                    "1",
                    max_age=CONSENT_MAX_AGE,
                    domain=domain,
                    secure=secure,
                    http_only=True,
                )
            ]
        else:
            values = [
                expire_cookie(name, domain=domain, secure=secure)
                for name in (self.cookie, FBP_COOKIE, FBC_COOKIE)
            ] + [expire_cookie(PAGE_COOKIE, secure=secure)]
            values += expire_everywhere(TWIN_COOKIE, domain=domain, secure=secure)
            if secure:
                values.append(expire_cookie(TWIN_COOKIE_HTTPS, secure=True))
            values.append(expire_cookie(TEST_COOKIE, secure=secure))
        return [("Set-Cookie", value) for value in values]
