"""Shape checks for what a browser posts to the mirror endpoint: the body, then each event.

The browser is untrusted input: every field is type- and size-checked here before anything is
enriched or stored, and each failure names the field (``events[2].custom_data.value``) so a
developer sees at once what their ``capiBridge.track()`` or ``fbq()`` call got wrong. Meta's own
rules (Purchase needs currency, ISO codes, matching quality) are applied once, when the
events are stored (``Bridge.enqueue_many``); this module keeps hostile or oversized input away
from them. Which events are mirrored at all (configured pixels, known event names) is the
endpoint's decision, not a shape error.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from capi_bridge.events import CUSTOM_DATA_KEYS
from capi_bridge.request import RequestView, Response

#: Most events one request may carry (the browser sends one or a few at a time).
MAX_EVENTS = 20
#: How far in the past a (clock-corrected) browser event_time is believed; older or future
#: times are replaced by the receive time.
EVENT_TIME_WINDOW = 3600.0
MAX_CUSTOM_KEYS = 50
MAX_LIST_ITEMS = 200
MAX_STRING = 1000
MAX_URL = 2048

#: Numbers posted are below this in size (float precision ends there; Meta's too).
MAX_NUMBER = 1e15
#: Default bound on ``value``, ``predicted_ltv`` and ``net_revenue`` (setting
#: ``max_event_value``): a conversion worth more in any currency is not a browser's to claim.
MAX_VALUE = 1_000_000_000

#: Largest request body read; adapters read at most ``MAX_BODY_BYTES + 1`` bytes.
MAX_BODY_BYTES = 64 * 1024
#: Longest event name (the pixel's limit for custom events).
MAX_EVENT_NAME = 50

#: An event id: capi-bridge mints UUIDs, but the page's own fbq calls bring theirs (an order
#: number, say), which the server copy must keep for Meta to deduplicate the pair.
EVENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
#: The browser's hold id: random, per tab session. capi-bridge.js sends the time its first page
#: was shown in base 36, a dash and a UUID.
HOLD_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
_HOLD_FORMAT = "16 to 64 characters of A-Z, a-z, 0-9, '_' and '-'"
_PIXEL_ID = re.compile(r"\d{1,20}")
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_EVENT_KEYS = frozenset(
    {
        "event_name",
        "event_id",
        "event_time",
        "custom_data",
        "event_source_url",
        "referrer_url",
        "pixel_id",
    }
)
_BODY_KEYS = frozenset(
    {"token", "events", "consent", "sent_at", "hold", "px", "hook", "referrer_url"}
)
_CONTENT_TYPES = ("text/plain", "application/json")
_NUMBER_KEYS = frozenset({"value", "predicted_ltv", "net_revenue"})
#: A margin may be a loss; a value or a lifetime value may not be negative.
_SIGNED_KEYS = frozenset({"net_revenue"})
_NUMERIC_TEXT = re.compile(r"-?\d{1,15}(\.\d{1,6})?")
#: Text that must not reach the outbox or Meta: NUL, and lone UTF-16 surrogates (JSON's
#: ``"\\ud800"`` decodes to one; it has no UTF-8 form, so Meta would refuse the whole batch).
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


class Rejected(Exception):
    """A request the endpoint refuses: HTTP status, machine code, sentence, faulty field, and
    what else the answer carries (``extra`` keys of the error object, ``headers``)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers
        self.extra = extra

    def response(self) -> Response:
        """The answer: ``{"error": {"code", "message", "field", ...}}``."""
        error = {"code": self.code, "message": self.message, "field": self.field, **self.extra}
        return Response.json(self.status, {"error": error}, headers=self.headers)


def _bad(field: str, message: str, code: str = "invalid_field") -> Rejected:
    return Rejected(400, code, f"{field}: {message}", field)


def _is_number(value: Any) -> bool:
    """A finite JSON number of sane size (a 400-digit integer is compared, never converted:
    converting it to a float raises)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -MAX_NUMBER < value < MAX_NUMBER
    return isinstance(value, float) and math.isfinite(value) and abs(value) < MAX_NUMBER


def _check_text(value: str, field: str, limit: int = MAX_STRING) -> None:
    if len(value) > limit:
        raise _bad(field, f"is longer than {limit} characters")
    if _BAD_TEXT.search(value):
        raise _bad(field, "holds a NUL character or a lone surrogate (not text Meta takes)")


def _check_scalar(value: Any, field: str) -> None:
    if value is None or isinstance(value, bool) or _is_number(value):
        return
    if isinstance(value, str):
        _check_text(value, field)
        return
    if isinstance(value, (int, float)):
        raise _bad(field, f"must be a finite number below {MAX_NUMBER:.0e}", "implausible_value")
    raise _bad(field, "must be a string, number, boolean or null")


def _check_amount(value: Any, field: str, key: str, max_value: float) -> None:
    """A money amount: a number (or numeric text), not negative (but a margin), not above the
    site's ``max_event_value``."""
    if not (_is_number(value) or (isinstance(value, str) and _NUMERIC_TEXT.fullmatch(value))):
        raise _bad(field, "must be a number")
    amount = float(value)
    low = -max_value if key in _SIGNED_KEYS else 0
    if not low <= amount <= max_value:
        bounds = f"{int(low):,} to {int(max_value):,}"
        raise _bad(field, f"must be a number from {bounds}", "implausible_value")


def _check_list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(field, "must be a list")
    if len(value) > MAX_LIST_ITEMS:
        raise _bad(field, f"has more than {MAX_LIST_ITEMS} items")
    return value


def _check_contents(value: Any, field: str, max_value: float) -> None:
    for i, item in enumerate(_check_list(value, field)):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise _bad(where, "must be an object with an id")
        if not isinstance(item.get("id"), (str, int)) or isinstance(item.get("id"), bool):
            raise _bad(f"{where}.id", "is required (a string or an integer)")
        for key, sub in item.items():
            if not isinstance(key, str) or not _KEY.fullmatch(key):
                raise _bad(where, "has an invalid key")
            _check_scalar(sub, f"{where}.{key}")
        quantity = item.get("quantity")
        if quantity is not None and (
            isinstance(quantity, bool) or not isinstance(quantity, int) or not 0 <= quantity < 10**9
        ):
            raise _bad(f"{where}.quantity", "must be a non-negative integer", "implausible_value")
        if item.get("item_price") is not None:
            _check_amount(item["item_price"], f"{where}.item_price", "item_price", max_value)


def check_custom_data(
    data: Any, field: str, max_value: float = MAX_VALUE
) -> dict[str, Any] | None:
    """``custom_data`` as given, once every key and value has a sane type and size, amounts
    are plausible (see ``max_event_value``) and no text holds NUL or a lone surrogate."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise _bad(field, "must be an object")
    if len(data) > MAX_CUSTOM_KEYS:
        raise _bad(field, f"has more than {MAX_CUSTOM_KEYS} keys")
    for key, value in data.items():
        where = f"{field}.{key}"
        if not _KEY.fullmatch(key):
            raise _bad(field, f"key {key[:70]!r} is not a parameter name (letters, digits, _ . -)")
        if key in _NUMBER_KEYS:
            _check_amount(value, where, key, max_value)
        elif key == "num_items":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**9:
                raise _bad(where, "must be a non-negative integer")
        elif key == "content_ids":
            for i, item in enumerate(_check_list(value, where)):
                if isinstance(item, bool) or not isinstance(item, (str, int)):
                    raise _bad(f"{where}[{i}]", "must be a string or an integer")
                _check_scalar(item, f"{where}[{i}]")
        elif key == "contents":
            _check_contents(value, where, max_value)
        elif key == "status":
            if not isinstance(value, (str, bool)):
                raise _bad(where, "must be a string or a boolean")
            _check_scalar(value, where)
        elif key in CUSTOM_DATA_KEYS:
            if not isinstance(value, str):
                raise _bad(where, "must be a string")
            _check_scalar(value, where)
        elif isinstance(value, list):
            for i, item in enumerate(_check_list(value, where)):
                _check_scalar(item, f"{where}[{i}]")
        else:
            _check_scalar(value, where)
    return data


def _event_time(raw: Any, offset: float, now: float) -> int:
    """The browser's time corrected by its clock offset; the receive time if implausible."""
    if _is_number(raw):
        corrected = float(raw) + offset
        if now - EVENT_TIME_WINDOW <= corrected <= now + 60:
            return int(min(corrected, now))
    return int(now)


def http_url(value: Any, field: str) -> str | None:
    """An http(s) URL the browser sent, else None (too long or not a string: refused)."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_URL:
        raise _bad(field, f"must be a URL of at most {MAX_URL} characters")
    _check_text(value, field, MAX_URL)
    return value if value.startswith(("http://", "https://")) else None


def event_name(raw: Any) -> str | None:
    """A posted event's name, if it is one: a printable string of 1 to 50 characters."""
    if isinstance(raw, dict):
        name = raw.get("event_name")
        if isinstance(name, str) and 0 < len(name) <= MAX_EVENT_NAME and name.isprintable():
            return name
    return None


def check_events(
    events: Any, sent_at: Any, *, now: float, max_value: float = MAX_VALUE
) -> list[dict[str, Any]]:
    """The posted events, checked and normalized (event_time corrected, empty keys dropped).

    ``sent_at`` is the browser's clock (ms) when it sent the request: the difference to ``now``
    corrects every event_time for a wrong client clock, so an event the browser held (waiting
    for consent, a token refresh) keeps the time it happened. ``pixel_id`` (the one pixel of a
    ``trackSingle`` call) is kept when given.
    """
    if not isinstance(events, list) or not events:
        raise _bad("events", "must be a non-empty list", "malformed")
    if len(events) > MAX_EVENTS:
        raise Rejected(413, "too_many_events", f"at most {MAX_EVENTS} events per request", "events")
    offset = 0.0
    if _is_number(sent_at) and abs(now - sent_at / 1000) < 86400:
        offset = now - sent_at / 1000
    out = []
    for index, raw in enumerate(events):
        field = f"events[{index}]"
        if not isinstance(raw, dict):
            raise _bad(field, "must be an object", "malformed")
        unknown = sorted(set(raw) - _EVENT_KEYS)
        if unknown:
            raise _bad(f"{field}.{unknown[0][:64]}", "is not an event field", "unknown_field")
        name = event_name(raw)
        if name is None:
            raise _bad(f"{field}.event_name", f"must be 1 to {MAX_EVENT_NAME} printable characters")
        event_id = raw.get("event_id")
        if not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
            raise _bad(f"{field}.event_id", "must be 1-64 letters, digits, '-', '_', '.', ':'")
        event: dict[str, Any] = {
            "event_name": name,
            "event_id": event_id,
            "event_time": _event_time(raw.get("event_time"), offset, now),
        }
        custom = check_custom_data(raw.get("custom_data"), f"{field}.custom_data", max_value)
        if custom:
            event["custom_data"] = custom
        source = http_url(raw.get("event_source_url"), f"{field}.event_source_url")
        event["event_source_url"] = source
        referrer = http_url(raw.get("referrer_url"), f"{field}.referrer_url")
        if referrer:
            event["referrer_url"] = referrer
        pixel = raw.get("pixel_id")
        if pixel is not None:
            if not isinstance(pixel, str) or not _PIXEL_ID.fullmatch(pixel):
                raise _bad(f"{field}.pixel_id", "must be a pixel id (1 to 20 digits)")
            event["pixel_id"] = pixel
        out.append(event)
    return out


def read_body(request: RequestView, body: bytes) -> dict[str, Any]:
    """The JSON object of a POST, once its size, type and keys are sane."""
    declared = (request.headers.get("content-length") or "0").strip()
    digits = declared.isascii() and declared.isdigit()  # not int(): "²" is a digit to Python
    too_long = digits and (len(declared) > 18 or int(declared) > MAX_BODY_BYTES)
    if len(body) > MAX_BODY_BYTES or too_long:
        raise Rejected(413, "body_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype not in _CONTENT_TYPES:
        raise Rejected(
            415, "unsupported_media_type", "send text/plain or application/json", "Content-Type"
        )
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise Rejected(400, "malformed", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise Rejected(400, "malformed", "the body must be a JSON object")
    unknown = sorted(set(data) - _BODY_KEYS)
    if unknown:
        key = unknown[0][:64]
        raise Rejected(400, "unknown_field", f"unexpected key {key!r}", key)
    return data


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def hold_id(value: Any, *, required: bool) -> str | None:
    """The body's ``hold`` id, checked: the key held events are stored and released under."""
    if value is None:
        if not required:
            return None
        raise Rejected(
            400,
            "hold_missing",
            "consent is required and not given: send the browser's hold id "
            f"({_HOLD_FORMAT}) so these events wait for consent",
            "hold",
        )
    if not isinstance(value, str) or not HOLD_ID.fullmatch(value):
        raise Rejected(400, "hold_invalid", f"hold must be {_HOLD_FORMAT}", "hold")
    return value


def hold_started(hold: str, *, now: float, oldest: float) -> int | None:
    """When the tab session holding events under ``hold`` began (ms), as its id says; None
    for ids without a plausible time (older browsers' scripts, made-up values)."""
    head, sep, _ = hold.partition("-")
    if not sep or not 0 < len(head) <= 11 or not head.isalnum():
        return None
    started = int(head, 36)  # the browser's clock: an hour fast is still believed
    return started if (now - oldest) * 1000 <= started <= (now + 3600) * 1000 else None


def pixel_flag(value: Any) -> bool | None:
    """The body's ``px``: did fbevents.js load in the browser (absent: it did not say)."""
    if value is None:
        return None
    if value in (0, 1) and not isinstance(value, float):
        return bool(value)
    raise Rejected(400, "malformed", "px must be 0 or 1 (did the pixel library load)", "px")


def hook_flag(value: Any) -> int | None:
    """The body's ``hook``: why the page's fbq calls are not mirrored (see drops.HOOK_FAILURES)."""
    if value is None:
        return None
    if value in (1, 2) and not isinstance(value, (bool, float)):
        return int(value)
    raise Rejected(400, "malformed", "hook must be 1 or 2 (why fbq is not hooked)", "hook")
