"""Scoped test events: one browser's events go to Events Manager's Test events tab.

``capi-bridge test-link URL --code TEST123`` prints a link signed with the site's secret key
(strangers cannot make one) that is valid for a day; opening it on a site with
``scoped_test_events`` on turns it into an HttpOnly cookie routing only that browser's events to
the code for an hour. Kept apart from :mod:`capi_bridge.pages` so a page's own logic stays short.
"""

from __future__ import annotations

from capi_bridge.cookies import TEST_COOKIE, set_cookie
from capi_bridge.request import RequestView
from capi_bridge.signing import TEST_CODE_SALT, SignedValues

#: The signed link parameter and how long a link, then its cookie, routes events.
TEST_PARAM = "capi_bridge_test"
TEST_LINK_MAX_AGE = 86400
TEST_COOKIE_MAX_AGE = 3600


class ScopedTestCodes:
    """Reads a browser's test code from its link or cookie, and sets the cookie."""

    def __init__(self, secret_key: str) -> None:
        self._signed = SignedValues(secret_key, TEST_CODE_SALT)

    def _from_link(self, request: RequestView) -> str | None:
        link = request.query_param(TEST_PARAM)
        code = self._signed.loads(link, TEST_LINK_MAX_AGE) if link else None
        return code if isinstance(code, str) else None

    def code(self, request: RequestView) -> str | None:
        """The test event code this request's browser carries (link, else cookie), if any."""
        code = self._from_link(request)
        if code is None:
            code = self._signed.loads(request.cookies.get(TEST_COOKIE), TEST_COOKIE_MAX_AGE)
        return code if isinstance(code, str) else None

    def cookies(self, request: RequestView, *, secure: bool) -> list[str]:
        """The ``Set-Cookie`` value a test link earns (none without one)."""
        code = self._from_link(request)
        if code is None:
            return []
        value = self._signed.dumps(code)
        return [
            set_cookie(
                TEST_COOKIE, value, max_age=TEST_COOKIE_MAX_AGE, secure=secure, http_only=True
            )
        ]


def make_test_link(secret_key: str, url: str, code: str) -> str:
    """A link that routes one browser's events to ``code`` (Events Manager's Test events tab)
    for an hour; valid for a day, and only on a site with ``scoped_test_events`` on."""
    separator = "&" if "?" in url else "?"
    token = SignedValues(secret_key, TEST_CODE_SALT).dumps(code)
    return f"{url}{separator}{TEST_PARAM}={token}"
