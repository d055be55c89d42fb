"""Signed page tokens: issued per page, refused when forged, expired or for another site."""

from __future__ import annotations

import dataclasses
import json

import pytest
from itsdangerous import URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode

from capi_bridge.errors import ConfigError
from capi_bridge.signing import (
    SALT,
    PageSigner,
    TokenError,
    TokenExpired,
    TokenForged,
    TokenWrongSite,
)

KEY = "a-test-secret-key-of-enough-length"
T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def signer(
    clock: Clock | None = None, key: str = KEY, pixels: tuple[str, ...] = ("111",)
) -> PageSigner:
    return PageSigner(key, pixels, max_age=7200, clock=clock or Clock())


def test_round_trip() -> None:
    s = signer()
    token = s.issue(host="Shop.Example.com:443", page_view_id="pv-12345678")
    claims = s.verify(token, host="shop.example.com")
    assert claims.pixel_ids == ("111",)
    assert claims.page_view_id == "pv-12345678"
    assert claims.host == "shop.example.com"
    assert claims.issued_at == T0
    assert len(token) < 200 and token.isascii()


@pytest.mark.parametrize(
    ("page_view_id", "descends"),
    [("pv-12345678", False), (None, False), ("pv-é<&>", False), ("pv-1", True)],
)
def test_tokens_are_what_itsdangerous_signs(page_view_id: str | None, descends: bool) -> None:
    """issue() writes the token by hand (the payload's JSON from its parts, the HMAC from a
    copy of the key's state) for speed; it must be exactly what itsdangerous' own serializer
    makes of the same payload at the same second, which verify() reads."""
    clock = Clock(T0 + 0.7)
    s = signer(clock, pixels=("111", "222"))
    host = "shop.example.com"
    claims = s.verify(s.issue(host=host, page_view_id="root"), host=host)
    parent = claims if descends else None
    token = s.issue(host="Shop.Example.com:443", page_view_id=page_view_id, descends=parent)
    payload: dict[str, object] = {"p": ["111", "222"], "v": page_view_id, "h": "shop.example.com"}
    if descends:
        payload |= {"o": int(claims.loaded_at), "r": claims.root}
    reference = URLSafeTimedSerializer(KEY, salt=SALT)
    reference_signer = reference.make_signer(SALT)
    reference_signer.get_timestamp = lambda: int(clock())  # type: ignore[method-assign]
    body = base64_encode(json.dumps(payload, separators=(",", ":")).encode())
    assert token == reference_signer.sign(body).decode()
    clock.now += 1  # the next second: a new stamp, still the same bytes as itsdangerous'
    token = s.issue(host="shop.example.com", page_view_id=page_view_id)
    payload = {"p": ["111", "222"], "v": page_view_id, "h": "shop.example.com"}
    body = base64_encode(json.dumps(payload, separators=(",", ":")).encode())
    assert token == reference_signer.sign(body).decode()


def test_expired() -> None:
    clock = Clock()
    s = signer(clock)
    token = s.issue(host="example.com", page_view_id=None)
    clock.now = T0 + 7200
    assert s.verify(token, host="example.com").page_view_id is None
    clock.now = T0 + 7201
    with pytest.raises(TokenExpired) as exc:
        s.verify(token, host="example.com")
    assert exc.value.code == "token_expired"
    assert s.verify(token, host="example.com", max_age=30 * 86400).issued_at == T0


def test_token_from_the_future_is_refused() -> None:
    token = signer(Clock(T0 + 3600)).issue(host="example.com", page_view_id=None)
    with pytest.raises(TokenExpired):
        signer().verify(token, host="example.com")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
        lambda t: t[:5] + ("A" if t[5] != "A" else "B") + t[6:],
        lambda t: t.split(".")[0],
        lambda t: "",
        lambda t: "x" * 5000,
        lambda t: None,
        lambda t: 42,
    ],
)
def test_forged(tamper: object) -> None:
    token = signer().issue(host="example.com", page_view_id="pv-12345678")
    with pytest.raises(TokenForged) as exc:
        signer().verify(tamper(token), host="example.com")  # type: ignore[operator]
    assert exc.value.code == "token_forged"


def test_forged_with_another_key_or_salt() -> None:
    other = signer(key="another-secret-key-entirely-1234").issue(
        host="example.com", page_view_id=None
    )
    with pytest.raises(TokenForged):
        signer().verify(other, host="example.com")
    # Same key, but signed for another purpose (itsdangerous' default salt).
    foreign = URLSafeTimedSerializer(KEY).dumps({"p": ["111"], "v": None, "h": "example.com"})
    with pytest.raises(TokenForged):
        signer().verify(foreign, host="example.com")


def test_replayed_on_another_site_or_for_other_pixels() -> None:
    token = signer().issue(host="shop.example.com", page_view_id=None)
    with pytest.raises(TokenWrongSite) as exc:
        signer().verify(token, host="evil.example.net")
    assert exc.value.code == "token_wrong_site"
    with pytest.raises(TokenWrongSite):
        signer(pixels=("222",)).verify(token, host="shop.example.com")
    assert isinstance(exc.value, TokenError)


@pytest.mark.parametrize("key", [None, "", "   "])
def test_missing_secret_key_is_a_config_error(key: str | None) -> None:
    with pytest.raises(ConfigError) as exc:
        PageSigner(key, ["111"])
    assert exc.value.setting == "CAPI_BRIDGE_SECRET_KEY"
    assert "CAPI_BRIDGE_SECRET_KEY" in str(exc.value)


def test_from_settings() -> None:
    @dataclasses.dataclass
    class Conf:
        secret_key: str | None = KEY
        pixel_ids: tuple[str, ...] = ("111", "222")
        token_max_age: float = 60.0

        def name_of(self, field: str) -> str:
            return {"secret_key": "SECRET_KEY"}.get(field, field)

    s = PageSigner.from_settings(Conf(), clock=Clock())
    assert s.max_age == 60.0 and s.pixel_ids == ("111", "222")
    with pytest.raises(ConfigError) as exc:
        PageSigner.from_settings(Conf(secret_key=None))
    # named as the settings say the user wrote it (here: Flask's own SECRET_KEY)
    assert exc.value.setting == "SECRET_KEY" and "set SECRET_KEY to" in str(exc.value)
