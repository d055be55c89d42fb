"""``capi-bridge check``: one test event with the real configuration, Meta's answer explained.

The first contact with Meta is where set-ups fail (a token from the wrong business, a pixel id
copied from the wrong dataset), and the app itself only logs such failures from a background
thread. This command sends a single PageView, synchronously, with the same settings the app
reads, and turns Meta's error codes (pixel-capi.md §3.6) into the fix. It refuses to run without
a test event code: that routes the event to Events Manager's Test events tab instead of the
pixel's normal traffic (Meta still keeps such events, so the check sends one PageView, never a
conversion). The access token is never printed: every line goes through :class:`_Output`,
which masks it even if a server were to echo it back.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import TextIO

from capi_bridge._version import __version__
from capi_bridge.clock import FIX, ClockSkew, ClockWatch
from capi_bridge.errors import ConfigError
from capi_bridge.events import Event, UserData
from capi_bridge.graph import GraphClient, GraphError, GraphResult, events_url
from capi_bridge.settings import Settings, env

EXIT_OK = 0
EXIT_FAILED = 1  # Meta refused, or could not be reached
EXIT_CONFIG = 2  # a setting is missing or malformed; nothing was sent

USER_AGENT = f"capi-bridge-check/{__version__}"
#: Hashed before sending: passes Meta's customer-information rules with no real person's data.
EXTERNAL_ID = "capi-bridge-check"
#: A reserved name that can never be a real page (RFC 2606), used without --url or allowed hosts.
FALLBACK_URL = "https://capi-bridge.invalid/check"

_WHERE_TEST_CODE = (
    "Find it in Events Manager > your pixel (dataset) > Test events: the 'Test server events' "
    "section shows a code such as TEST12345. Pass it with --test-event-code or "
    "CAPI_BRIDGE_TEST_EVENT_CODE."
)
_TOKEN_FIX = (
    "Fix: create a token that does not expire and set CAPI_BRIDGE_ACCESS_TOKEN to it: Events "
    "Manager > your pixel > Settings > Conversions API > Generate access token; or Business "
    "Settings > Users > System users > (add a system user) > Assign assets: the pixel > "
    "Generate new token, with the ads_management permission."
)
#: Meta's auth subcodes (pixel-capi.md §3.6).
_AUTH_SUBCODES = {
    458: "the app is not installed for this user",
    459: "the user is checkpointed (must log in to Facebook)",
    460: "the user changed their password",
    463: "the session has expired",
}


class _Output:
    """Progress to ``out``, failures to ``err``; the token is masked in both."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self._out, self._err = out, err
        self._secrets: list[str] = []

    def hide(self, secret: str | None) -> None:
        if secret and secret.strip():
            self._secrets.append(secret)

    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[access token]")
        return text

    def say(self, text: str) -> None:
        print(self._clean(text), file=self._out, flush=True)

    def fail(self, text: str) -> None:
        print(self._clean(text), file=self._err, flush=True)


def run(
    *,
    pixel_id: str | None = None,
    access_token: str | None = None,
    test_event_code: str | None = None,
    graph_url: str | None = None,
    url: str | None = None,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Check every configured pixel; :data:`EXIT_OK` only when Meta took the event for each."""
    output = _Output(out or sys.stdout, err or sys.stderr)
    output.hide(access_token)
    overrides = {
        name: value
        for name, value in (
            ("pixel_id", pixel_id),
            ("access_token", access_token),
            ("test_event_code", test_event_code),
            ("graph_url", graph_url),
        )
        if value is not None
    }

    def naming(field: str) -> str:  # a flag is named as typed, the rest as exported
        return "--" + field.replace("_", "-") if field in overrides else env(field)

    try:
        settings = Settings.from_mapping(
            os.environ if environ is None else environ, naming=naming, **overrides
        )
    except ConfigError as exc:
        output.fail(f"capi-bridge check: {exc}")
        output.fail("Nothing was sent.")
        return EXIT_CONFIG
    output.hide(settings.access_token)
    code = settings.test_event_code
    if not code:
        output.fail(
            "capi-bridge check: no test event code, so nothing was sent: without one the check's "
            "event would land in your pixel's real traffic."
        )
        output.fail(_WHERE_TEST_CODE)
        return EXIT_CONFIG
    page = url or _default_url(settings)
    if not re.fullmatch(r"https?://\S+", page):
        output.fail(f"capi-bridge check: --url {page!r} is not an http(s) URL; nothing was sent.")
        return EXIT_CONFIG
    watch = ClockWatch(log=False)  # reported below, with the answer
    with GraphClient.from_settings(settings, clock_watch=watch) as client:
        results = [
            _check_pixel(client, settings, pixel, code, page, output)
            for pixel in settings.pixel_ids
        ]
    _report_clock(watch.latest, output)
    return max(results)


def _report_clock(reading: ClockSkew | None, output: _Output) -> None:
    """Meta's answers carry its time: a clock far off loses events however right the rest is."""
    if reading is None:
        return  # no answer came back (or one without a Date header)
    if reading.off:
        output.fail(f"WARNING: this machine's clock is {reading.describe()}: {FIX}.")
    else:
        output.say(f"Clock: this machine's clock is {reading.describe()}.")


def _default_url(settings: Settings) -> str:
    hosts = [h.lstrip(".") for h in settings.allowed_hosts if h.lstrip(".") and "*" not in h]
    return f"https://{hosts[0]}/" if hosts else FALLBACK_URL


def check_event(page: str) -> Event:
    """The one event the check sends: a website PageView with just enough customer
    information for Meta's baseline rules (a hashed external_id and a user agent)."""
    return Event(
        event_name="PageView",
        action_source="website",
        event_source_url=page,
        user_data=UserData(external_id=EXTERNAL_ID, client_user_agent=USER_AGENT),
    )


def _check_pixel(
    client: GraphClient,
    settings: Settings,
    pixel: str,
    code: str,
    page: str,
    output: _Output,
) -> int:
    edge = events_url(settings.graph_url, settings.api_version, pixel)
    output.say(
        f"capi-bridge check: sending 1 test PageView to pixel {pixel} at {edge} "
        f"(test_event_code {code}, event_source_url {page})"
    )
    try:
        result = client.send(pixel, [check_event(page).to_graph()], test_event_code=code)
    except GraphError as error:
        for line in explain(error, settings, pixel, edge):
            output.fail(line)
        return EXIT_FAILED
    return _report_success(result, pixel, code, output)


def _report_success(result: GraphResult, pixel: str, code: str, output: _Output) -> int:
    if result.events_received != 1:
        output.fail(
            f"Meta answered events_received {result.events_received} for 1 event "
            f"(fbtrace_id {result.fbtrace_id or '-'}): it did not take the event. Send Meta "
            "this fbtrace_id if it persists."
        )
        return EXIT_FAILED
    output.say(
        f"OK: Meta received the event for pixel {pixel}: events_received 1, "
        f"fbtrace_id {result.fbtrace_id or '-'}."
    )
    for message in result.messages:
        output.say(f"  Meta's note: {message}")
    output.say(
        f"Look at Events Manager > pixel {pixel} > Test events (code {code}): a PageView from "
        f"{USER_AGENT} appears there within a minute or so."
    )
    return EXIT_OK


# --- explanations -------------------------------------------------------------------------------


def explain(error: GraphError, settings: Settings, pixel: str, edge: str) -> list[str]:
    """What went wrong, in the reader's terms, then the fix, then Meta's own words."""
    if error.status is None:
        return _network(error, settings, edge)
    if error.code in (102, 190) or (error.code is None and error.status == 401):
        lines = _bad_token(error)
    elif error.code == 100 and error.error_subcode == 33:
        lines = _unknown_pixel(pixel)
    elif error.error_subcode == 2804050:
        lines = _too_little_customer_information(settings)
    elif error.code is None:
        return _not_graph(error, settings)
    else:
        lines = _other(error)
    return [*lines, f"Meta's answer: {_meta_words(error)}"]


def _meta_words(error: GraphError) -> str:
    """Meta's message with its code, subcode and fbtrace_id, for a search or a support ticket."""
    parts = [f"HTTP {error.status}"]
    parts += [f"code {error.code}"] if error.code is not None else []
    parts += [f"subcode {error.error_subcode}"] if error.error_subcode is not None else []
    parts.append(f"fbtrace_id {error.fbtrace_id or '-'}")
    detail = ": ".join(p for p in (error.error_user_title, error.error_user_msg) if p)
    text = f"{error.message} ({detail})" if detail and detail != error.message else error.message
    return f"{text} [{', '.join(parts)}]"


def _network(error: GraphError, settings: Settings, edge: str) -> list[str]:
    graph_setting = env("graph_url")
    where = (
        f"that the server {graph_setting} names ({settings.graph_url}) is running and reachable"
        if settings.graph_url != "https://graph.facebook.com"
        else "that this machine reaches graph.facebook.com on port 443 (DNS, a firewall, an "
        "outbound proxy: HTTPS_PROXY)"
    )
    return [
        f"FAILED: no answer from the Graph API: {error.message}.",
        f"Tried: POST {edge} (the token travels in a header, never in the URL).",
        f"Check: {where}. Nothing reached Meta, so there is no fbtrace_id.",
    ]


def _bad_token(error: GraphError) -> list[str]:
    why = _AUTH_SUBCODES.get(error.error_subcode or 0)
    reason = f" ({why})" if why else ""
    return [
        f"FAILED: Meta refused the access token (code {error.code}){reason}: it is invalid, "
        "expired or revoked. A user's token dies with their password or their access; a "
        "system user's token does not expire.",
        _TOKEN_FIX,
    ]


def _unknown_pixel(pixel: str) -> list[str]:
    return [
        f"FAILED: Meta does not know pixel {pixel}, or this token may not use it "
        "(code 100, subcode 33).",
        f"Fix: check {env('pixel_id')} is the id Events Manager shows under the pixel's "
        "(dataset's) name, and that the token was made for it: from that pixel's Settings > "
        "Conversions API, or by a system user that has the pixel assigned (Business Settings > "
        "Users > System users > Assign assets).",
    ]


def _too_little_customer_information(settings: Settings) -> list[str]:
    return [
        "FAILED: Meta found too little customer information in the event (subcode 2804050).",
        "The check sends a hashed external_id and a user agent, which is enough, so something "
        f"between here and Meta changed the event ({env('graph_url')} is "
        f"{settings.graph_url}). In an app this error means events carry only broad keys "
        "(city, state, zip, gender, birth date): send em, ph or external_id with identify(), "
        "and keep the _fbp cookie and the client IP.",
    ]


def _not_graph(error: GraphError, settings: Settings) -> list[str]:
    return [
        f"FAILED: {error.message}.",
        f"That is not the Graph API answering: check {env('graph_url')} "
        f"(now {settings.graph_url}) and any proxy in between. fbtrace_id "
        f"{error.fbtrace_id or '-'}.",
    ]


def _other(error: GraphError) -> list[str]:
    if error.code == 368:
        return [
            "FAILED: Meta has temporarily blocked this app or business for a policy violation "
            "(code 368): wait, and read the notifications Meta sent the business."
        ]
    advice = {
        "retry": "Meta is busy or throttling: try again in a few minutes.",
        "auth": _TOKEN_FIX,
        "config": "A permission or set-up problem on Meta's side: check the token's "
        "permissions and the pixel's access in Business Settings.",
        "rejected": "Meta refused the event itself.",
    }[error.kind.value]
    return [f"FAILED: Meta refused the test event. {advice}"]
