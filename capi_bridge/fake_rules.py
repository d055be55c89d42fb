"""What the fake Graph API enforces, as Meta does: the body shapes, the rules, the faults.

Kept apart from the fake's server and state (:mod:`capi_bridge.testing` is their public face)
so the rules read as one list. This is written independently of :mod:`capi_bridge.validation`
on purpose: the fake must not share a bug with our own schema guard, or it would agree with it.
Production code never imports this module.
"""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


MAX_EVENTS = 1000
MAX_AGE = 7 * 86400
MAX_AGE_PHYSICAL_STORE = 62 * 86400
ACTION_SOURCES = _words(
    "email website app phone_call chat physical_store system_generated business_messaging other"
)
EVENT_KEYS = _words(
    "event_name event_time user_data custom_data event_source_url opt_out event_id action_source"
    " data_processing_options data_processing_options_country data_processing_options_state"
    " app_data referrer_url original_event_data customer_segmentation attribution_data"
    " messaging_channel advanced_measurement_table"
)
USER_DATA_KEYS = _words(
    "em ph fn ln db ge ct st zp country external_id client_ip_address client_user_agent fbc fbp"
    " subscription_id fb_login_id lead_id anon_id madid page_id page_scoped_user_id ctwa_clid"
    " ig_account_id ig_sid f5first f5last fi dobd dobm doby"
)
HASHED_KEYS = ("em", "ph", "fn", "ln", "db", "ge", "ct", "st", "zp", "country")
#: pixel-capi.md §3.7: an event whose customer information is a subset of one of these is rejected.
TOO_BROAD = tuple(
    _words(combo)
    for combo in ("ct country st zp ge client_user_agent", "db client_user_agent", "fn ge", "ln ge")
)
TOP_LEVEL_KEYS = _words(
    "data access_token appsecret_proof test_event_code partner_agent namespace_id upload_id"
    " upload_tag upload_source platforms progress trace"
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
EDGE_PATH = re.compile(r"/(v\d+\.\d+)/([^/]+)/events/?")
CODE_MESSAGES = {
    1: "An unknown error occurred",
    2: "An unexpected error has occurred. Please retry your request later.",
    4: "(#4) Application request limit reached",
    17: "(#17) User request limit reached",
    341: "(#341) Application limit reached",
    102: "Session key invalid or no longer valid",
    190: "Invalid OAuth access token - Cannot parse access token",
    368: "(#368) The action attempted has been deemed abusive or is otherwise disallowed",
}


class GraphReject(Exception):
    """One error answer in Meta's envelope; raised while checking, turned into the reply."""

    def __init__(self, status: int, code: int, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.fields = {k: v for k, v in fields.items() if v is not None}
        self.headers: dict[str, str] = {}

    def envelope(self, fbtrace_id: str) -> dict[str, Any]:
        body = {"message": self.message, "type": "OAuthException", "code": self.code}
        body.update(self.fields)
        body.setdefault("is_transient", False)
        return {"error": {**body, "fbtrace_id": fbtrace_id}}


def invalid(message: str) -> GraphReject:
    return GraphReject(400, 100, message)


def _capi(subcode: int, title: str, user_msg: str) -> GraphReject:
    """The CAPI-specific rejections: code 100, a 2804xxx subcode, Meta's user-facing texts."""
    return GraphReject(
        400, 100, "Invalid parameter", error_subcode=subcode, error_user_title=title,
        error_user_msg=user_msg,
    )  # fmt: skip


# --- what Meta enforces ------------------------------------------------------------------------


def decode_data(raw: Any) -> list[dict[str, Any]]:
    """``data`` as a list of events: a JSON array, a JSON string of one, or (the Business SDK's
    form-encoded shape) a JSON array whose elements are themselves JSON strings."""
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
        if isinstance(data, list):
            data = [json.loads(e) if isinstance(e, str) else e for e in data]
    except ValueError:
        raise invalid("(#100) param data must be an array of JSON objects") from None
    if data is None or data == []:
        raise invalid("(#100) The parameter data is required")
    if not isinstance(data, list):
        raise invalid("(#100) param data must be an array.")
    for i, event in enumerate(data):
        if not isinstance(event, dict):
            raise invalid(f"(#100) param data[{i}] must be an object")
    return data


def check_batch(events: list[dict[str, Any]], now: float) -> None:
    """Raise for the first invalid event: one bad event rejects the whole batch (§3.1)."""
    if len(events) > MAX_EVENTS:
        raise invalid(f"(#100) data may hold at most {MAX_EVENTS} events; got {len(events)}")
    for i, event in enumerate(events):
        check_event(i, event, now)


def check_event(i: int, event: Mapping[str, Any], now: float) -> None:
    _no_unexpected_keys(event, EVENT_KEYS, f"$['data'][{i}]")
    for name in ("event_name", "event_time", "action_source", "user_data"):
        if event.get(name) in (None, ""):
            raise invalid(f"(#100) The parameter data[{i}][{name}] is required")
    when = event["event_time"]
    if not isinstance(when, int) or isinstance(when, bool):
        raise invalid(f"(#100) Param data[{i}][event_time] must be an integer")
    if not isinstance(event["event_name"], str):
        raise invalid(f"(#100) Param data[{i}][event_name] must be a string")
    if event["action_source"] not in ACTION_SOURCES:
        raise invalid(
            f"(#100) Param data[{i}][action_source] must be one of {sorted(ACTION_SOURCES)}"
        )
    store = event["action_source"] == "physical_store"
    if when < now - (MAX_AGE_PHYSICAL_STORE if store else MAX_AGE):
        raise _capi(
            2804003,
            "Event Timestamp Too Old",
            "The timestamp for this event is too far in the past. Events need to be sent from "
            "your server within 7 days of when they occurred.",
        )
    if not isinstance(event["user_data"], dict):
        raise invalid(f"(#100) Param data[{i}][user_data] must be an object")
    check_user_data(i, event["user_data"])


def check_user_data(i: int, user_data: Mapping[str, Any]) -> None:
    _no_unexpected_keys(user_data, USER_DATA_KEYS, f"$['data'][{i}]['user_data']")
    for key in HASHED_KEYS:
        if user_data.get(key) is not None and not _is_hashed(user_data[key]):
            raise _capi(
                2804016,
                "User Parameter Not Hashed",
                f"The customer information parameter {key} in user_data must be hashed with "
                "SHA-256 (64 lowercase hexadecimal characters).",
            )
    present = {key for key, value in user_data.items() if value not in (None, "", [])}
    if not present or any(present <= combo for combo in TOO_BROAD):
        raise _capi(
            2804050,
            "Insufficient customer information",
            "This event has insufficient customer information: it has no customer information "
            "parameters, or only a combination too broad to be useful for matching.",
        )


def _is_hashed(value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    return bool(values) and all(isinstance(v, str) and _SHA256.fullmatch(v) for v in values)


def _no_unexpected_keys(obj: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise GraphReject(
                400, 100, f'Unexpected key "{key}" on param "{where}"',
                error_user_title="Server Side Api Parameter Error",
            )  # fmt: skip


def parse_body(content_type: str, raw: bytes) -> dict[str, Any]:
    """The POST parameters, from a JSON object, a urlencoded form or a multipart form."""
    kind = content_type.split(";")[0].strip().lower()
    try:
        if kind == "application/json":
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
            return body
        if kind == "multipart/form-data":
            return _parse_multipart(content_type, raw)
        if kind in ("application/x-www-form-urlencoded", ""):
            return _last_values(parse_qs(raw.decode(), keep_blank_values=True))
    except ValueError as exc:
        raise invalid(f"(#100) The request body could not be read as {kind}: {exc}") from None
    raise invalid(f"(#100) Unsupported content type {kind!r}")


def _last_values(pairs: Mapping[str, list[str]]) -> dict[str, Any]:
    """One value per field, except a repeated ``data``: the SDK's aiohttp path sends each
    event as its own ``data=`` field, and all of them count."""
    return {k: v if k == "data" and len(v) > 1 else v[-1] for k, v in pairs.items()}


def _parse_multipart(content_type: str, raw: bytes) -> dict[str, Any]:
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    fields: dict[str, list[str]] = {}
    for part in message.walk():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields.setdefault(name, []).append(payload.decode())
    return _last_values(fields)


# --- faults ------------------------------------------------------------------------------------

_FAULT_KEYS = {
    "status": {"status", "retry_after"},
    "delay": {"seconds"},
    "reset": set(),
    "code": {"code", "subcode", "message", "status", "retry_after"},
}


@dataclasses.dataclass
class Fault:
    """One queued misbehaviour, applied to the next ``count`` event POSTs."""

    mode: str
    count: int = 1
    status: int | None = None
    retry_after: float | None = None
    seconds: float = 0.0
    code: int | None = None
    subcode: int | None = None
    message: str | None = None

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> Fault:
        """Check a fault spec (from Python or the control API); ValueError says what is wrong."""
        mode = spec.get("mode")
        if mode not in _FAULT_KEYS:
            raise ValueError(f"mode must be one of {sorted(_FAULT_KEYS)}, got {mode!r}")
        unknown = set(spec) - _FAULT_KEYS[mode] - {"mode", "count"}
        if unknown:
            raise ValueError(f"{sorted(unknown)} not allowed for mode {mode!r}")
        fault = cls(mode, **{k: v for k, v in spec.items() if k != "mode"})
        fault._check()
        return fault

    def _check(self) -> None:
        ints = {"count": self.count, "status": self.status, "code": self.code}
        ints["subcode"] = self.subcode
        for name, value in ints.items():
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{name} must be an integer")
        if self.count < 1:
            raise ValueError("count must be at least 1")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        if self.mode == "code" and self.code is None:
            raise ValueError("mode 'code' needs a code")
        for name in ("seconds", "retry_after"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"{name} must be a number >= 0")

    def reject(self) -> GraphReject:
        """The Graph error this fault answers with (modes ``status`` and ``code``)."""
        status, code = self.status or 500, self.code
        if code is None:
            code = 2 if status >= 500 else {429: 4, 401: 190}.get(status, 100)
        elif self.status is None:
            status = 401 if code in (102, 190) else 500 if code in (1, 2) else 400
        message = self.message or CODE_MESSAGES.get(code, f"(#{code}) Simulated error")
        reject = GraphReject(
            status, code, message, error_subcode=self.subcode, is_transient=code in (1, 2)
        )
        if self.retry_after is not None:
            reject.headers["Retry-After"] = f"{self.retry_after:g}"
        return reject
