"""Observations: a small, PII-free record of every event capi-bridge handles, for the inspector
and the diagnostics.

Meta's Events Manager tells an advertiser hours later that deduplication or match quality is
poor, never which event or why (peers spec §3, complaints 1, 11 and 16). Each event capi-bridge
sees leaves one row per pixel in the outbox's ``observations`` table (shared by every worker
process, pruned after :data:`RETENTION`): when, which channel it came through, which match keys
it carries (a bitmask), masked previews of them, a hash of its ``fbp`` (to compare the pixel's
copy with the server's without storing either) and the age of its click id. Raw customer data
never gets here: ``em``/``ph``/``external_id`` are already SHA-256 hashes when they are
observed, and only four hex digits of a hash are kept; the IP keeps its first half,
``fbp``/``fbc`` their ends.

Cost: an enqueued event carries its observation in its own outbox row (a :data:`Tag` in the
``obs_*`` columns: the same single INSERT, no second write), and the dispatcher's ingestion
files it into ``observations`` with one ``INSERT ... SELECT``, off the request path. Only a
duplicate (the second copy of a pair the outbox already holds) is written at once. Held events
are observed when released, never before. All told an enqueue costs 7-10 µs more (of ~80);
the masked previews, about 8 µs more, are only made while the inspector is enabled, the one
reader that shows them (diagnostics need none).

Channels:

* ``browser``: the event arrived at the mirror endpoint from capi-bridge.js, which called the
  pixel with the same name and id just before (or saw the page's own ``fbq`` call carry them).
  The row stands for both copies: the pixel call and the server copy the mirror sends
  (``pixel_loaded`` says whether fbevents.js had loaded in that browser). ``problem`` was set
  on rows of events the mirror refused before those were counted instead
  (:mod:`capi_bridge.drops`: one row per anonymous post would let anyone grow the disk); such
  rows are still read until they age out;
* ``server``: a server-originated event (``Page.track()`` or a direct ``Bridge.enqueue``);
  ``twin`` is 1 when its pixel twin is on its way to the next page;
* ``twin``: a rendered page fired the pixel twin of a server event. These are noted at render
  time in memory (:class:`ObservationBuffer`) and written by the dispatcher, so rendering a page
  never waits on SQLite;
* ``note`` (:data:`NOTE`): no copy, a remark on a server event: a visitor's value the app gave
  (``identify(em="jane@intranet")``) was dropped as invalid and the event went without it
  (``problem`` names the key and why, never the value). Buffered like twins.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

BROWSER, SERVER, TWIN = 1, 2, 3
#: Not a copy of the event but a note about it: a visitor's value dropped as invalid.
NOTE = 4

#: Rows older than this are pruned by the dispatcher: Meta's dedup coverage is a 7-day
#: average, and 7 days is also how late an event may reach Meta.
RETENTION = 7 * 86400.0

# --- match keys ---------------------------------------------------------------------------

EM, PH, EXTERNAL_ID, FBP, FBC, IP, UA, OTHER = 1, 2, 4, 8, 16, 32, 64, 128
#: Bit, short label and Meta's user_data key, in the order the inspector shows them.
KEYS: tuple[tuple[int, str, str], ...] = (
    (EM, "em", "em"),
    (PH, "ph", "ph"),
    (EXTERNAL_ID, "external_id", "external_id"),
    (FBP, "fbp", "fbp"),
    (FBC, "fbc", "fbc"),
    (IP, "ip", "client_ip_address"),
    (UA, "ua", "client_user_agent"),
    (OTHER, "other", "fn, ln, ct, st, zp, country, db, ge, fb_login_id, lead_id"),
)
OTHER_FIELDS = ("fn", "ln", "ct", "st", "zp", "country", "db", "ge", "fb_login_id", "lead_id")
#: The keys the pixel attaches to a browser event by itself (cookies, and what Meta reads off
#: the browser's own request): the browser copy's keys.
PIXEL_KEYS = FBP | FBC | IP | UA
_BITS = {
    "em": EM,
    "ph": PH,
    "external_id": EXTERNAL_ID,
    "fbp": FBP,
    "fbc": FBC,
    "client_ip_address": IP,
    "client_user_agent": UA,
    **dict.fromkeys(OTHER_FIELDS, OTHER),
}
_HASHED = frozenset({"em", "ph", "external_id"})
_HASHED_KEYS = (("em", EM, "em="), ("ph", PH, "ph="), ("external_id", EXTERNAL_ID, "external_id="))
#: Between the previews of one row (``em=1a2b|fbp=fb.1.17000…7890|ip=81.2.x.x``).
_SEPARATOR = "|"


def key_labels(mask: int) -> list[str]:
    """The short labels (``em``, ``ip``...) of the keys in ``mask``, in display order."""
    return [label for bit, label, _ in KEYS if mask & bit]


@dataclasses.dataclass(frozen=True)
class Origin:
    """How an event reached capi-bridge; :meth:`Bridge.enqueue` records it with the event.

    ``channel`` is ``"server"`` (default), ``"browser"`` (the mirror endpoint) or ``"twin"``;
    ``pixel_loaded`` is the browser's report of fbevents.js (None: it did not say); ``twin``
    says a pixel twin of this server event will fire on the next page.
    """

    channel: str = "server"
    pixel_loaded: bool | None = None
    twin: bool | None = None

    @property
    def code(self) -> int:
        return BROWSER if self.channel == "browser" else TWIN if self.channel == "twin" else SERVER


SERVER_ORIGIN = Origin()
TWIN_ORIGIN = Origin("twin")


#: What an enqueued row carries of its observation until ingestion files it: channel,
#: pixel_loaded, twin, keys, fbp_hash, fbc_age, preview (the ``outbox.obs_*`` columns).
Tag = tuple[int, "int | None", "int | None", int, "str | None", "int | None", str]


class Observation(NamedTuple):
    """One row of ``observations``."""

    at: float
    pixel_id: str
    event_name: str
    event_id: str
    channel: int
    pixel_loaded: int | None
    twin: int | None
    keys: int
    fbp_hash: str | None
    fbc_age: int | None
    preview: str
    problem: str | None = None


class Described(NamedTuple):
    """What an event's ``user_data`` shows, computed once for all of its pixels."""

    keys: int
    fbp_hash: str | None
    fbc_age: int | None
    preview: str


def describe(
    user_data: Mapping[str, Any] | None, event_time: float, *, previews: bool = True
) -> Described:
    """Match keys, fbp hash, fbc age and (with ``previews``) masked previews of one
    ``user_data`` (hashed, or raw identity keys only; a hashed key that is not a hash is
    previewed as ``?``, never shown). Straight-line look-ups: a few microseconds."""
    if not user_data:
        return Described(0, None, None, "")
    if not previews:
        keys = 0
        bit_of = _BITS.get
        for field, value in user_data.items():
            if value:
                keys |= bit_of(field, 0)
        fbp, fbc = user_data.get("fbp"), user_data.get("fbc")
        return Described(
            keys,
            _fbp_hash(_first(fbp)) if fbp else None,
            _fbc_age(_first(fbc), event_time) if fbc else None,
            "",
        )
    get = user_data.get
    keys = 0
    parts = []
    fbp_hash = fbc_age = None
    for field, bit, label in _HASHED_KEYS:
        value = get(field)
        if value:
            if value.__class__ is not str:
                value = _first(value)
                if not value:
                    continue
            keys |= bit
            shown = value[:4] if len(value) == 64 and value.isalnum() else "?"
            parts.append(label + shown)
    fbp = get("fbp")
    if fbp:
        fbp = _first(fbp)
        keys |= FBP
        parts.append("fbp=" + _ends(fbp))
        fbp_hash = _fbp_hash(fbp)
    fbc = get("fbc")
    if fbc:
        fbc = _first(fbc)
        keys |= FBC
        parts.append("fbc=" + _ends(fbc))
        fbc_age = _fbc_age(fbc, event_time)
    ip = get("client_ip_address")
    if ip:
        keys |= IP
        parts.append("ip=" + mask_ip(_first(ip)))
    ua = get("client_user_agent")
    if ua:
        ua = _first(ua)
        keys |= UA
        short = ua[:20].replace(_SEPARATOR, "/")
        parts.append("ua=" + short + "…" if len(ua) > 20 else "ua=" + short)
    if not user_data.keys().isdisjoint(OTHER_FIELDS):
        keys |= OTHER
    return Described(keys, fbp_hash, fbc_age, _SEPARATOR.join(parts))


def _first(value: Any) -> str:
    """A user_data value as text (the first one of a list)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return _first(value[0]) if value else ""
    return "" if value is None else str(value)


def tag(origin: Origin, described: Described) -> Tag:
    """The observation an enqueued event carries in its outbox rows (one per pixel)."""
    return tag_prefix(origin) + described


def tag_prefix(origin: Origin) -> tuple[int, int | None, int | None]:
    """A :data:`Tag`'s values that come from ``origin`` (the same for all its events)."""
    loaded = None if origin.pixel_loaded is None else int(origin.pixel_loaded)
    twin = None if origin.twin is None else int(origin.twin)
    return (origin.code, loaded, twin)


def observations(
    pixels: Sequence[str],
    event_name: str,
    event_id: str,
    at: float,
    origin: Origin,
    described: Described,
    problem: str | None = None,
) -> list[Observation]:
    """One row per pixel the event goes to."""
    loaded = None if origin.pixel_loaded is None else int(origin.pixel_loaded)
    twin = None if origin.twin is None else int(origin.twin)
    return [
        Observation(
            at,
            pixel,
            event_name,
            event_id,
            origin.code,
            loaded,
            twin,
            described.keys,
            described.fbp_hash,
            described.fbc_age,
            described.preview,
            problem[:300] if problem else None,
        )
        for pixel in pixels
    ]


def twin_copies(
    pixels: Sequence[str],
    fired: Iterable[tuple[str, str]],
    identity: Mapping[str, Any],
    now: float,
) -> list[Observation]:
    """Pixel twins a page fired, ``(event_name, event_id)`` each, with the keys the pixel
    attaches by itself (the browser's cookies, IP and user agent: ``identity``)."""
    described = describe(identity, now)
    return [
        row
        for name, event_id in fired
        for row in observations(pixels, name, event_id, now, TWIN_ORIGIN, described)
    ]


def dropped_fields(
    pixels: Sequence[str],
    event_name: str,
    event_id: str,
    dropped: Mapping[str, str],
    now: float,
) -> list[Observation]:
    """Notes that ``event_id`` went out without the user_data keys of ``dropped`` (key ->
    why, worded without the value), one per pixel and key."""
    return [
        Observation(
            now,
            pixel,
            event_name,
            event_id,
            NOTE,
            None,
            None,
            0,
            None,
            None,
            "",
            f"user_data.{field} dropped: {why}",
        )
        for field, why in dropped.items()
        for pixel in pixels
    ]


def previews(text: str | None) -> dict[str, str]:
    """The stored previews as the inspector shows them (hashes as ``sha256:1a2b…``)."""
    out = {}
    for part in (text or "").split(_SEPARATOR):
        field, _, value = part.partition("=")
        if not value:
            continue
        if field in _HASHED:
            value = "not hashed" if value == "?" else f"sha256:{value}…"
        out[field] = value
    return out


def mask_ip(text: str) -> str:
    """``81.2.x.x`` / ``2001:db8:…``: enough to tell a proxy's address from a visitor's."""
    if "." in text and ":" not in text:
        parts = text.split(".")
        return ".".join(parts[:2]) + ".x.x" if len(parts) == 4 else "?"
    parts = text.split(":")
    return ":".join(parts[:2]) + ":…" if len(parts) > 2 else "?"


def _fbp_hash(fbp: str) -> str:
    """Enough of a hash to tell two fbp values apart, not enough to keep one."""
    return hashlib.sha256(fbp.encode()).hexdigest()[:16]


def _ends(text: str) -> str:
    """``fb.1.17000…7890``: the format and creation time stay readable, the id does not."""
    return text if len(text) <= 16 else f"{text[:10]}…{text[-4:]}"


def _fbc_age(fbc: str, event_time: float) -> int | None:
    """Seconds from the click (the creation time ``fbc`` carries, in ms) to the event."""
    parts = fbc.split(".")
    if len(parts) < 4 or not parts[2].isdigit():
        return None
    return max(0, int(event_time - int(parts[2]) / 1000))


class ObservationBuffer:
    """Observations waiting in memory for the dispatcher to write (pixel twins, noted while a
    page renders). Bounded: past ``limit`` rows the oldest are dropped, since an inspector
    view is not worth memory nor a write on the request path.

    Rows leave it only through :meth:`write_to`, which drains and writes under one lock: a
    reader that wants every observation noted so far (the inspector, diagnostics) calls it
    too, and so waits for rows another thread has taken out but not yet written, instead of
    finding the buffer empty and reading the store before they are in it.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._rows: list[Observation] = []
        self._lock = threading.Lock()
        self._writing = threading.Lock()

    def add(self, rows: Iterable[Observation]) -> None:
        with self._lock:
            self._rows.extend(rows)
            if len(self._rows) > self.limit:
                del self._rows[: len(self._rows) - self.limit]

    def __len__(self) -> int:
        return len(self._rows)

    def _take(self) -> list[Observation]:
        with self._lock:
            rows, self._rows = self._rows, []
        return rows

    def write_to(self, write: Callable[[list[Observation]], object]) -> int:
        """Drain and ``write`` the rows; returns how many. Once it returns, every row added
        before the call is written, whichever thread wrote it. Rows whose write raised go
        back to the buffer (before any added since) and the error propagates."""
        with self._writing:
            rows = self._take()
            if rows:
                try:
                    write(rows)
                except BaseException:
                    self.add_back(rows)
                    raise
            return len(rows)

    def add_back(self, rows: list[Observation]) -> None:
        """Put rows that could not be written in front of the newer ones (bounded as
        :meth:`add`)."""
        with self._lock:
            self._rows[:0] = rows
            if len(self._rows) > self.limit:
                del self._rows[: len(self._rows) - self.limit]
