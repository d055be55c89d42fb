"""The pixel snippet: content, escaping in every context, CSP nonce, consent, page cookies."""

from __future__ import annotations

import dataclasses
import json
import re
from html.parser import HTMLParser
from typing import Any

import pytest

from capi_bridge.consent import ConsentPolicy
from capi_bridge.request import RequestView
from capi_bridge.settings import Settings
from capi_bridge.signing import PageSigner
from capi_bridge.snippet import PageRenderer, render_snippet, script_json, script_version

EVIL = "</script><script>alert(1)</script><!--\u2028\u2029&'\""


@dataclasses.dataclass(frozen=True)
class Conf:
    pixel_ids: tuple[str, ...] = ("111", "222")
    endpoint_path: str = "/capi-bridge/events"
    script_path: str = "/capi-bridge/capi-bridge.js"
    pixel_script_url: str = "https://connect.facebook.net/en_US/fbevents.js"
    token_max_age: float = 7200.0
    data_processing_options: tuple[str, ...] = ()
    data_processing_options_country: int | None = None
    data_processing_options_state: int | None = None
    mirror_pixel_calls: bool = True


class Tags(HTMLParser):
    """Collects elements with their attributes and each script's text."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def parse(markup: str) -> Tags:
    tags = Tags()
    tags.feed(markup)
    tags.close()
    return tags


def render(conf: Any = None, **kw: Any) -> str:
    kw.setdefault("page_view_id", "pv-0001-abcd")
    kw.setdefault("token", "tok.en")
    kw.setdefault("issued_at", 1_800_000_000.5)
    return render_snippet(conf or Conf(), **kw)


def config_of(markup: str) -> dict[str, Any]:
    match = re.search(r"window\.capiBridgeConfig=(\{.*?\});", markup)
    assert match
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def test_script_json_is_inert_in_html_and_valid_json() -> None:
    text = script_json({"v": EVIL})
    for forbidden in ("</", "<!--", "\u2028", "\u2029", "<", ">", "&"):
        assert forbidden not in text
    assert json.loads(text) == {"v": EVIL}
    with pytest.raises(ValueError):
        script_json(float("nan"))


def test_snippet_contents() -> None:
    markup = render()
    tags = parse(markup)
    assert [tag for tag, _ in tags.elements] == ["script", "script", "noscript", "img", "img"]
    inline = tags.scripts[0]
    assert inline.startswith("!function(f,b,e,v,n,t,s){if(f.fbq)return;")
    assert '"https://connect.facebook.net/en_US/fbevents.js"' in inline
    assert "fbq.disablePushState=true;fbq.allowDuplicatePageViews=true;" in inline
    assert "fbq('init',\"111\");fbq('init',\"222\");" in inline
    assert '["track","PageView",{},{eventID:' in inline  # boot.js, to the pixel unhooked
    assert "consent" not in inline.split("window.capiBridgeConfig")[0]
    assert config_of(markup) == {
        "endpoint": "/capi-bridge/events",
        "token": "tok.en",
        "pv": "pv-0001-abcd",
        "iat": 1_800_000_000,
        "ttl": 7200,
        "hold": False,
    }
    off = render(dataclasses.replace(Conf(), mirror_pixel_calls=False))
    assert config_of(off)["mirror"] is False  # boot.js leaves fbq alone
    external = tags.elements[1][1]
    assert external["src"] == f"/capi-bridge/capi-bridge.js?v={script_version()}"
    assert "async" in external
    images = [attrs["src"] for tag, attrs in tags.elements if tag == "img"]
    assert images == [
        f"https://www.facebook.com/tr?id={pid}&ev=PageView&eid=pv-0001-abcd&noscript=1"
        for pid in ("111", "222")
    ]


def test_every_value_is_escaped_for_its_context() -> None:
    conf = Conf(
        pixel_ids=("1",),
        endpoint_path="/e" + EVIL,
        script_path="/s" + EVIL,
        pixel_script_url="https://cdn.example/" + EVIL,
    )
    markup = render(
        conf,
        page_view_id="pv" + EVIL,
        token="t" + EVIL,
        advanced_matching={"em": EVIL, "external_id": "x"},
        nonce="n" + EVIL,
    )
    tags = parse(markup)
    assert [tag for tag, _ in tags.elements] == ["script", "script", "noscript", "img"]
    inline = tags.scripts[0]
    for forbidden in ("</script", "<!--", "\u2028", "\u2029"):
        assert forbidden not in inline
    assert config_of(markup)["endpoint"] == "/e" + EVIL
    assert config_of(markup)["pv"] == "pv" + EVIL
    init = re.search(r"fbq\('init',\"1\",(\{.*?\})\);", inline)
    assert init and json.loads(init.group(1)) == {"em": EVIL, "external_id": "x"}
    assert tags.elements[0][1]["nonce"] == "n" + EVIL  # attribute escaping round-trips
    assert tags.elements[1][1]["src"] == f"/s{EVIL}?v={script_version()}"
    assert "eid=pv%3C%2Fscript%3E" in str(tags.elements[3][1]["src"])


def test_csp_nonce_on_every_script_tag() -> None:
    tags = parse(render(nonce="r4nd0m+/="))
    scripts = [attrs for tag, attrs in tags.elements if tag == "script"]
    assert len(scripts) == 2 and all(attrs["nonce"] == "r4nd0m+/=" for attrs in scripts)
    assert all("nonce" not in attrs for tag, attrs in parse(render()).elements)


def test_advanced_matching_only_when_supplied() -> None:
    assert "fbq('init',\"111\");" in render()
    markup = render(advanced_matching={"em": "jsmith@example.com", "fn": "", "ph": None})
    assert 'fbq(\'init\',"111",{"em":"jsmith@example.com"});' in markup
    with pytest.raises(ValueError, match="email"):
        render(advanced_matching={"email": "x"})


def test_consent_not_given() -> None:
    markup = render(consent=False)
    inline = parse(markup).scripts[0]
    assert inline.index("fbq('consent','revoke');") < inline.index("fbq('init'")
    assert config_of(markup)["hold"] is True
    assert "<noscript>" not in markup  # an image cannot be consent-gated


def test_limited_data_use_before_init() -> None:
    inline = render(
        Conf(
            data_processing_options=("LDU",),
            data_processing_options_country=1,
            data_processing_options_state=1000,
        )
    )
    assert inline.index("fbq('dataProcessingOptions',[\"LDU\"],1,1000);") < inline.index("init")
    assert "fbq('dataProcessingOptions',[\"LDU\"]);" in render(
        Conf(data_processing_options=("LDU",))
    )


# --- PageRenderer -----------------------------------------------------------------------------


SETTINGS = Settings(
    pixel_id="111", access_token="t", secret_key="snippet-tests-secret-key-0123456789"
)


def page_request(cookie: str = "") -> RequestView:
    headers = {"User-Agent": "UA", **({"Cookie": cookie} if cookie else {})}
    return RequestView.build("GET", "https", "www.example.com", "/", "", headers, "8.8.8.8")


def test_renderer_binds_the_page_view_id_in_the_token() -> None:
    tags = PageRenderer(SETTINGS).render(page_request(), nonce="abc")
    claims = PageSigner.from_settings(SETTINGS).verify(tags.token, host="www.example.com")
    assert claims.page_view_id == tags.page_view_id
    assert config_of(tags.html)["pv"] == tags.page_view_id
    assert config_of(tags.html)["token"] == tags.token
    names = [cookie.split("=", 1)[0] for cookie in tags.set_cookies]
    assert names == ["_fbp", "_capib_pv"]
    assert tags.set_cookies[1].startswith(f"_capib_pv={tags.page_view_id}; Max-Age=120; Path=/")
    assert tags.identity.fbp and tags.set_cookies[0].startswith(f"_fbp={tags.identity.fbp};")
    assert PageRenderer(SETTINGS).render(page_request()).page_view_id != tags.page_view_id


def test_renderer_sets_no_cookie_without_consent() -> None:
    renderer = PageRenderer(SETTINGS, consent=ConsentPolicy(required=True))
    held = renderer.render(page_request("_fbp=fb.1.1596403881668.1116446470"))
    assert held.set_cookies == () and config_of(held.html)["hold"] is True
    granted = renderer.render(page_request("capib_consent=1"))
    assert [c.split("=")[0] for c in granted.set_cookies] == ["_fbp", "_capib_pv"]
    assert PageRenderer(SETTINGS).render(page_request(), consent=False).set_cookies == ()


def test_renderer_takes_consent_rules_from_settings_or_the_app() -> None:
    site = dataclasses.replace(SETTINGS, consent="required", consent_cookie="cmp_ok")
    renderer = PageRenderer(site)
    assert config_of(renderer.render(page_request("capib_consent=1")).html)["hold"] is True
    granted = renderer.render(page_request("cmp_ok=1"))
    assert config_of(granted.html)["hold"] is False and granted.set_cookies
    assert PageRenderer(site, consent=ConsentPolicy()).render(page_request()).set_cookies

    def cmp(request: RequestView) -> bool:  # the app's own consent logic decides alone
        return request.cookies.get("cmp") == "all"

    checked = PageRenderer(SETTINGS, consent=ConsentPolicy.from_settings(SETTINGS, cmp))
    assert checked.render(page_request("capib_consent=1")).set_cookies == ()
    assert config_of(checked.render(page_request("cmp=all")).html)["hold"] is False
