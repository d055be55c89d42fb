"""The event model: Meta's server event, user_data and custom_data, typed.

Field names are Meta's wire names (``em``, ``fbp``, ``event_source_url``...) so that an event
reads the same here, in Meta's docs and in a captured request. :meth:`Event.to_graph` gives the
dict that goes on the wire, with customer information normalized and hashed; an app can also hand
capi-bridge plain Graph-shaped mappings, which is what the browser endpoint does.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from capi_bridge.normalize import hash_user_data

#: Meta's standard events (pixel reference) plus PageView, the base-code event.
STANDARD_EVENTS = frozenset(
    {
        "AddPaymentInfo",
        "AddToCart",
        "AddToWishlist",
        "CompleteRegistration",
        "Contact",
        "CustomizeProduct",
        "Donate",
        "FindLocation",
        "InitiateCheckout",
        "Lead",
        "PageView",
        "Purchase",
        "Schedule",
        "Search",
        "StartTrial",
        "SubmitApplication",
        "Subscribe",
        "ViewContent",
    }
)

ACTION_SOURCES = frozenset(
    {
        "email",
        "website",
        "app",
        "phone_call",
        "chat",
        "physical_store",
        "system_generated",
        "business_messaging",
        "other",
    }
)

#: Every server-event key Meta documents (server-event parameters page); others are rejected.
SERVER_EVENT_KEYS = frozenset(
    {
        "event_name",
        "event_time",
        "user_data",
        "custom_data",
        "event_source_url",
        "opt_out",
        "event_id",
        "action_source",
        "data_processing_options",
        "data_processing_options_country",
        "data_processing_options_state",
        "app_data",
        "referrer_url",
        "original_event_data",
        "customer_segmentation",
        "attribution_data",
        "messaging_channel",
        "advanced_measurement_table",
    }
)

#: Standard custom_data keys; any other key is a custom property, which Meta allows.
CUSTOM_DATA_KEYS = frozenset(
    {
        "value",
        "currency",
        "content_name",
        "content_category",
        "content_ids",
        "contents",
        "content_type",
        "order_id",
        "predicted_ltv",
        "num_items",
        "status",
        "search_string",
        "delivery_category",
        "net_revenue",
        "item_number",
        "customer_segmentation",
    }
)

CONTENT_KEYS = frozenset(
    {
        "id",
        "quantity",
        "item_price",
        "title",
        "description",
        "brand",
        "category",
        "delivery_category",
    }
)

UserValue = str | Sequence[str] | None


def new_event_id() -> str:
    """A fresh event id: a random (version 4) UUID, the same shape the browser mints. Written
    out from 16 random bytes, as ``uuid.uuid4()`` makes it but without building a ``UUID``
    object: every page mints one."""
    h = os.urandom(16).hex()
    variant = "89ab"[int(h[16], 16) & 3]  # RFC 4122 variant bits 10xx
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


def _drop_none(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not None}


@dataclasses.dataclass
class UserData:
    """Customer information, raw or already hashed; hashing happens in :meth:`Event.to_graph`."""

    em: UserValue = None
    ph: UserValue = None
    fn: UserValue = None
    ln: UserValue = None
    db: UserValue = None
    ge: UserValue = None
    ct: UserValue = None
    st: UserValue = None
    zp: UserValue = None
    country: UserValue = None
    external_id: UserValue = None
    client_ip_address: str | None = None
    client_user_agent: str | None = None
    fbc: str | None = None
    fbp: str | None = None
    subscription_id: str | None = None
    fb_login_id: str | int | None = None
    lead_id: str | int | None = None
    anon_id: str | None = None
    madid: str | None = None
    page_id: str | None = None
    page_scoped_user_id: str | None = None
    ctwa_clid: str | None = None
    ig_account_id: str | None = None
    ig_sid: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The raw (unhashed) mapping, without unset keys."""
        return {
            k: list(v) if isinstance(v, (list, tuple)) else v
            for k, v in _drop_none(dataclasses.asdict(self)).items()
        }


@dataclasses.dataclass
class Content:
    """One item of ``custom_data.contents``; Meta requires ``id`` (and rejects items without)."""

    id: str
    quantity: int | None = None
    item_price: float | None = None
    title: str | None = None
    description: str | None = None
    brand: str | None = None
    category: str | None = None
    delivery_category: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))


@dataclasses.dataclass
class CustomData:
    """Event parameters; ``custom_properties`` are merged flat, as the pixel sends them."""

    value: float | int | None = None
    currency: str | None = None
    content_name: str | None = None
    content_category: str | None = None
    content_ids: Sequence[str] | None = None
    contents: Sequence[Content | Mapping[str, Any]] | None = None
    content_type: str | None = None
    order_id: str | None = None
    predicted_ltv: float | int | None = None
    num_items: int | None = None
    status: str | bool | None = None
    search_string: str | None = None
    delivery_category: str | None = None
    net_revenue: float | int | None = None
    item_number: str | None = None
    custom_properties: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "custom_properties":
                continue
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "contents":
                value = [c.to_dict() if isinstance(c, Content) else dict(c) for c in value]
            elif f.name == "content_ids":
                value = list(value)
            out[f.name] = value
        for key, value in self.custom_properties.items():
            if key in out:
                raise ValueError(f"custom_data.{key} is set twice (field and custom property)")
            out[key] = value
        return out


@dataclasses.dataclass
class Event:
    """One server event. Defaults fit a website event happening now, with a fresh id."""

    event_name: str
    event_time: int = dataclasses.field(default_factory=lambda: int(time.time()))
    event_id: str | None = dataclasses.field(default_factory=new_event_id)
    action_source: str = "website"
    event_source_url: str | None = None
    user_data: UserData | Mapping[str, Any] = dataclasses.field(default_factory=UserData)
    custom_data: CustomData | Mapping[str, Any] | None = None
    opt_out: bool | None = None
    referrer_url: str | None = None
    data_processing_options: Sequence[str] | None = None
    data_processing_options_country: int | None = None
    data_processing_options_state: int | None = None
    original_event_data: Mapping[str, Any] | None = None
    customer_segmentation: str | None = None
    app_data: Mapping[str, Any] | None = None
    attribution_data: Mapping[str, Any] | None = None
    messaging_channel: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The Graph-shaped mapping with user data as given (not yet hashed)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, (UserData, CustomData)):
                value = value.to_dict()
            elif f.name == "data_processing_options":
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    def to_graph(self) -> dict[str, Any]:
        """The wire dict: customer information normalized and SHA-256 hashed as Meta requires."""
        return graph_event(self.to_dict())

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> Event:
        """Rebuild an event from a Graph-shaped mapping (unknown keys raise ``TypeError``)."""
        kwargs = dict(data)
        kwargs.setdefault("event_id", None)
        return cls(**kwargs)


def graph_event(
    data: Mapping[str, Any],
    hasher: Callable[[Mapping[str, Any]], dict[str, Any]] = hash_user_data,
) -> dict[str, Any]:
    """A Graph-shaped event with its ``user_data`` hashed; everything else kept as is.

    ``hasher`` is :func:`~capi_bridge.normalize.hash_user_data` or a memo of it
    (:class:`~capi_bridge.hash_memo.HashMemo`, what ``Bridge`` uses): the same result."""
    return hash_in_place(dict(data), hasher)


def hash_in_place(
    out: dict[str, Any], hasher: Callable[[Mapping[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """:func:`graph_event`'s work done on ``out`` itself, a dict the caller owns (its own
    copy of the app's event): ``Bridge``'s enqueue path copies an event once, not twice."""
    user_data = out.get("user_data")
    if isinstance(user_data, UserData):
        user_data = user_data.to_dict()
    if user_data.__class__ is dict or isinstance(user_data, Mapping):  # dict: no ABC check
        out["user_data"] = hasher(user_data)
    custom = out.get("custom_data")
    if isinstance(custom, CustomData):
        out["custom_data"] = custom.to_dict()
    return out
