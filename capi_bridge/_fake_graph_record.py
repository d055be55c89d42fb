"""What the fake Graph API keeps of each request, so a test can assert how capi-bridge behaved.

Meta accepts some things capi-bridge must never do (a token in the URL, unknown top-level
parameters); the fake answers them as Meta would, so the only place they show is the record's
``warnings``, which tests assert is empty. The record itself is shown in test failures and by
``GET /_fake/requests``, so secrets are redacted here before anything is kept. Private to
:mod:`capi_bridge.testing`, its public face; production code never imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from capi_bridge.fake_rules import TOP_LEVEL_KEYS


def find_token(
    authorization: str, params: Mapping[str, Any], query: Mapping[str, list[str]]
) -> tuple[str | None, str | None]:
    """The token and where it came from; Meta reads all three places."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() in ("bearer", "oauth") and value.strip():
        return value.strip(), "authorization"
    if params.get("access_token"):
        return str(params["access_token"]), "body"
    if query.get("access_token"):
        return query["access_token"][-1], "query"
    return None, None


def request_warnings(source: str | None, params: Mapping[str, Any]) -> list[str]:
    """Things Meta accepts but capi-bridge must never do; tests assert this list is empty."""
    warnings = [
        f"unknown top-level parameter {key!r}" for key in params if key not in TOP_LEVEL_KEYS
    ]
    if source == "query":
        warnings.append(
            "access_token was sent in the URL query string, where proxies and access logs "
            "record it; send it in an Authorization: Bearer header"
        )
    return warnings


def recorded_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level fields except the events; a body token is kept as a marker, not a value."""
    kept = {key: value for key, value in params.items() if key != "data"}
    if "access_token" in kept:
        kept["access_token"] = "[redacted]"
    return kept


def redact_headers(headers: Any) -> dict[str, str]:
    """The request's headers with the Authorization value replaced by its scheme alone."""
    redacted = {}
    for name, value in headers.items():
        if name.lower() == "authorization":
            value = f"{value.split(' ', 1)[0]} [redacted]"
        redacted[name] = value
    return redacted
