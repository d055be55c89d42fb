"""Signed page tokens: proof that an event post comes from a page this site served, recently.

Every HTML page carries a token binding the pixel ids, the host and the page's PageView id,
signed with ``secret_key`` (itsdangerous, HMAC-SHA1 over a salted key, timestamped). The mirror
endpoint accepts events only with a valid, unexpired token for its own host, which keeps
strangers from injecting conversions into the advertiser's pixel, and it accepts a PageView only
with the id the token binds, which keeps a replayed token from inflating PageViews.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any, Protocol

from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode, int_to_bytes

from capi_bridge.errors import CapiBridgeError, ConfigError
from capi_bridge.settings_checks import secret_key_fix

SALT = "capi-bridge.page-token"
_COMPACT = json.JSONEncoder(separators=(",", ":"))
#: Tokens longer than this are rejected unread (ours are ~150 characters).
MAX_TOKEN_LENGTH = 1024
#: Clock difference tolerated between the servers that sign and verify.
CLOCK_SKEW = 60.0


class TokenError(CapiBridgeError):
    """A page token was refused; ``code`` is the machine-readable reason sent to the browser."""

    code = "token_invalid"


class TokenForged(TokenError):
    """The signature does not match: not made with this site's ``secret_key``, or altered."""

    code = "token_forged"


class TokenExpired(TokenError):
    """The token is older than allowed; a cached page must fetch a fresh one."""

    code = "token_expired"


class TokenWrongSite(TokenError):
    """A genuine token, but for another host or other pixels (a token replayed elsewhere)."""

    code = "token_wrong_site"


@dataclasses.dataclass(frozen=True)
class PageClaims:
    """What a verified token says about the page that carried it.

    ``loaded_at`` and ``root`` say which page load a token descends from: a page's own token
    (the time it was signed, its PageView id) or, once refreshed, the first token's. The
    endpoint refreshes tokens only within a window from ``loaded_at`` (refreshes cannot chain
    without end) and counts the PageViews one ``root`` binds."""

    pixel_ids: tuple[str, ...]
    page_view_id: str | None
    host: str
    issued_at: float
    loaded_at: float = 0.0
    root: str | None = None


class _SigningSettings(Protocol):
    @property
    def secret_key(self) -> str | None: ...
    @property
    def pixel_ids(self) -> tuple[str, ...]: ...
    @property
    def token_max_age(self) -> float: ...
    def name_of(self, field: str) -> str: ...


def normalize_host(host: str) -> str:
    """The host a token binds: lowercased, default ports dropped (browsers omit them)."""
    host = host.strip().lower().rstrip(".")
    for port in (":80", ":443"):
        if host.endswith(port):
            return host[: -len(port)]
    return host


@functools.lru_cache(maxsize=256)  # a site answers a handful of hosts; bounded for the rest
def _token_host(host: str) -> str:
    return normalize_host(host)


def _json_text(value: str | None) -> str:
    """``value`` as _COMPACT encodes it (ASCII-escaped JSON string, or ``null``)."""
    return "null" if value is None else encode_basestring_ascii(value)


class _KeyedSigner(TimestampSigner):
    """itsdangerous derives the HMAC key from secret and salt on every signature; a page
    signer signs with one key all its life, so derive it once."""

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        if secret_key is not None:
            return super().derive_key(secret_key)
        key: bytes | None = self.__dict__.get("_derived")
        if key is None:
            key = self.__dict__["_derived"] = super().derive_key()
        return key


class PageSigner:
    """Issues and verifies page tokens for one site.

    A key that is set is good enough: :class:`~capi_bridge.settings.Settings` holds the one
    rule for it (``settings_checks.check_secret_key``). Only its absence is refused here, since
    a site that sends server events alone never needs one.
    """

    def __init__(
        self,
        secret_key: str | None,
        pixel_ids: Sequence[str],
        *,
        max_age: float = 7200.0,
        clock: Callable[[], float] = time.time,
        setting: str = "CAPI_BRIDGE_SECRET_KEY",
    ) -> None:
        if not secret_key or not secret_key.strip():
            raise ConfigError(
                setting,
                "no secret key is set, so page tokens cannot be signed",
                secret_key_fix(setting),
                field="secret_key",
            )
        self.pixel_ids = tuple(pixel_ids)
        self.max_age = max_age
        self._clock = clock
        self._serializer = URLSafeTimedSerializer(secret_key, salt=SALT)
        # One signer for every page (making one derives its key: an HMAC per call otherwise).
        # itsdangerous stamps tokens with int(time.time()); stamp with our clock instead so
        # tests (and the expiry check in verify) agree on what "now" is.
        signer = _KeyedSigner(secret_key, salt=SALT)
        signer.get_timestamp = lambda: int(self._clock())  # type: ignore[method-assign]
        self._signer = signer
        self._mac = hmac.new(signer.derive_key(), digestmod=hashlib.sha1)
        self._stamp: tuple[int, bytes] = (-1, b"")
        self._pixels_json = _COMPACT.encode(list(self.pixel_ids))

    @classmethod
    def from_settings(
        cls, settings: _SigningSettings, *, clock: Callable[[], float] = time.time
    ) -> PageSigner:
        return cls(
            settings.secret_key,
            settings.pixel_ids,
            max_age=settings.token_max_age,
            clock=clock,
            setting=settings.name_of("secret_key"),
        )

    def issue(
        self, *, host: str, page_view_id: str | None, descends: PageClaims | None = None
    ) -> str:
        """A token for a page served on ``host`` whose PageView id is ``page_view_id``;
        ``descends``: the claims of the token a refresh replaces (its page load is kept).
        A page's own token carries no more than before (``o`` and ``r`` only once refreshed)."""
        # The payload's JSON as _COMPACT writes it ({"p":[...],"v":...,"h":...}), assembled
        # from its parts: the pixel ids' JSON is the same for every page. The serializer's own
        # dump_payload tries zlib on every token (~20 µs per page) to save a few bytes; its
        # loads() reads the uncompressed form just the same.
        text = (
            f'{{"p":{self._pixels_json},"v":{_json_text(page_view_id)},'
            f'"h":{_json_text(_token_host(host))}'
        )
        if descends is not None:
            text += f',"o":{int(descends.loaded_at)},"r":{_json_text(descends.root)}'
        return self._sign(base64_encode((text + "}").encode("utf-8")))

    def _sign(self, body: bytes) -> str:
        """What itsdangerous' ``TimestampSigner.sign`` makes (``body.stamp.signature``, the
        HMAC-SHA1 of ``body.stamp`` under the derived key, URL-safe base64), from a copy of
        the key's HMAC state and with the stamp made once a second: signing is on every page's
        path.
        ``verify`` reads it with itsdangerous itself (a test holds the two equal)."""
        now = int(self._clock())
        stamp = self._stamp
        if stamp[0] != now:
            stamp = self._stamp = (now, base64_encode(int_to_bytes(now)))
        value = body + b"." + stamp[1]
        mac = self._mac.copy()  # the key's HMAC state, set up once (OpenSSL's is not cheap)
        mac.update(value)
        signature = base64_encode(mac.digest())
        return (value + b"." + signature).decode("ascii")

    def verify(self, token: Any, *, host: str, max_age: float | None = None) -> PageClaims:
        """The claims of a valid token for ``host``; raises a :class:`TokenError` subclass.

        ``max_age`` defaults to ``token_max_age``; the endpoint passes a longer one when it
        re-issues a token for a cached page, whose own token may have expired long ago.
        """
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise TokenForged("the token is missing or malformed")
        try:
            payload, stamp = self._serializer.loads(token, return_timestamp=True)
        except BadSignature:
            raise TokenForged("the token's signature does not match this site's key") from None
        except (ValueError, OverflowError, OSError):  # a signed time no calendar holds
            raise TokenForged("the token's timestamp is malformed") from None
        issued = stamp.timestamp()
        age = self._clock() - issued
        if age > (self.max_age if max_age is None else max_age) or age < -CLOCK_SKEW:
            raise TokenExpired("the page token has expired")
        if not (
            isinstance(payload, dict)
            and isinstance(payload.get("p"), list)
            and all(isinstance(p, str) for p in payload["p"])
            and isinstance(payload.get("v"), (str, type(None)))
            and isinstance(payload.get("h"), str)
            and isinstance(payload.get("o", 0), int)
            and isinstance(payload.get("r"), (str, type(None)))
        ):
            raise TokenForged("the token's payload is not a page token")
        if payload["h"] != normalize_host(host):
            raise TokenWrongSite("the token was issued for another site")
        if not set(payload["p"]) & set(self.pixel_ids):
            raise TokenWrongSite("the token was issued for other pixels")
        return PageClaims(
            pixel_ids=tuple(payload["p"]),
            page_view_id=payload["v"],
            host=payload["h"],
            issued_at=issued,
            loaded_at=float(payload.get("o", issued)),
            root=payload.get("r") if "o" in payload else payload["v"],
        )


#: Salts of the other signed values (a value signed for one use never verifies for another).
PENDING_EVENTS_SALT = "capi-bridge.server-events"
TEST_CODE_SALT = "capi-bridge.test-event-code"
INSPECTOR_SALT = "capi-bridge.inspector-link"


class SignedValues:
    """Small signed, timestamped values for cookies and links: server events waiting for the
    next page, scoped test event codes. Verification never raises: a missing, forged, expired
    or oversized value is simply absent (``None``), because the request must go on."""

    def __init__(self, secret_key: str, salt: str) -> None:
        self._serializer = URLSafeTimedSerializer(secret_key, salt=salt)

    def dumps(self, value: Any) -> str:
        text = self._serializer.dumps(value)
        return text if isinstance(text, str) else text.decode("ascii")

    def loads(self, text: str | None, max_age: float) -> Any:
        if not text or len(text) > 3000:
            return None
        try:
            return self._serializer.loads(text, max_age=int(max_age))
        except (BadSignature, ValueError, OverflowError, OSError):  # SignatureExpired is a
            return None  # BadSignature; a signed time no calendar holds raises the others
