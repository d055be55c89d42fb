"""Customer-information normalization and hashing, checked against Meta's own vectors.

Sources, strongest first: the worked examples on Meta's customer-information-parameters page
(with their SHA-256 values), the Parameter Builder's Node test vectors
(``tests/vectors/param_builder.json``, with our documented departures), the Business SDK's
``normalize_test.py``. The Business SDK itself is used twice: to show where it is wrong (and we
are right) and, where it is right, as an independent oracle.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from facebook_business.adobjects.serverside.normalize import Normalize
from facebook_business.adobjects.serverside.user_data import UserData
from hypothesis import assume, given
from hypothesis import strategies as st

from capi_bridge import _geo
from capi_bridge.errors import InvalidUserData
from capi_bridge.normalize import (
    HASHED_FIELDS,
    PLAIN_FIELDS,
    hash_user_data,
    is_hashed,
    normalize,
    sha256_hex,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "param_builder.json").read_text("utf-8"))
ERROR = "<error>"
SHA_RE = re.compile(r"[0-9a-f]{64}")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- Meta's documentation -------------------------------------------------------------------

META_DOC_VECTORS = [
    # field, input, country hint, normalized, SHA-256 printed on Meta's page
    (
        "em",
        "John_Smith@gmail.com",
        None,
        "john_smith@gmail.com",
        "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
    ),
    (
        "ph",
        "(650)555-1212",
        "us",
        "16505551212",
        "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176",
    ),
    (
        "fn",
        "Mary",
        None,
        "mary",
        "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec",
    ),
    ("fn", "정", None, "정", "8fa8cd9c440be61d0151429310034083132b35975c4bea67fdd74158eb51db14"),
    (
        "fn",
        "Valéry",
        None,
        "valéry",
        "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c",
    ),
    (
        "db",
        "2/16/1997",
        None,
        "19970216",
        "01acdbf6ec7b4f478a225f1a246e5d6767eeab1a7ffa17f025265b5b94f40f0c",
    ),
    (
        "country",
        "United States",
        None,
        "us",
        "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621",
    ),
]


@pytest.mark.parametrize(("field", "value", "country", "normalized", "digest"), META_DOC_VECTORS)
def test_meta_documentation_vectors(
    field: str, value: str, country: str | None, normalized: str, digest: str
) -> None:
    assert normalize(field, value, country=country) == normalized
    assert sha256_hex(normalized) == digest
    assert hash_user_data({field: value}, country=country) == {field: digest}


def test_meta_phone_vector_takes_its_country_from_the_customer() -> None:
    user = hash_user_data({"ph": "(650)555-1212", "country": "US"})
    assert user["ph"] == "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ct", "paris"),
        ("ct", "london"),
        ("ct", "newyork"),
        ("st", "az"),
        ("st", "ca"),
        ("zp", "94035"),
        ("zp", "1987"),
        ("zp", "75018"),
        ("zp", "m11ae"),
        ("ge", "f"),
        ("ge", "m"),
    ],
)
def test_meta_documented_normalized_examples_are_fixed_points(field: str, value: str) -> None:
    assert normalize(field, value) == value


# --- Business SDK normalize_test.py / user_data_test.py -------------------------------------


@pytest.mark.parametrize(
    "email",
    ["a@b.c", "foo@bar.co", "foo@bar.com", "f`oo@bar.com", "fo'o@bar.com", "f'o'o@bar.com"],
)
def test_sdk_valid_emails_hash(email: str) -> None:
    assert hash_user_data({"em": email}) == {"em": sha(email)}


@pytest.mark.parametrize("email", ["a", "abc", "a@b", "@b.c", ".c"])
def test_sdk_invalid_emails_raise(email: str) -> None:
    with pytest.raises(InvalidUserData, match=r"^user_data\.em: .* is not an email address$"):
        normalize("em", email)


def test_sdk_invalid_email_at_sign_alone_is_empty() -> None:
    # The SDK raises for "@"; it has no letter or digit, so here it is dropped like "".
    assert normalize("em", "@") == ""
    assert hash_user_data({"em": "@"}) == {}


@pytest.mark.parametrize("email", ['"a b"@c.d', "a\\@b@c.d"])
def test_quoted_local_parts_accepted_by_the_sdk_are_refused(email: str) -> None:
    # RFC quoted/escaped local parts: the SDK accepts them, the Parameter Builder and the pixel
    # refuse them (and "no spaces" rules the first out), so no browser hash could ever match.
    with pytest.raises(InvalidUserData):
        normalize("em", email)


@pytest.mark.parametrize("field", sorted(HASHED_FIELDS))
@pytest.mark.parametrize("value", ["a" * 64, " " + "a" * 64 + " "])
def test_sdk_already_hashed_values_pass_through(field: str, value: str) -> None:
    assert normalize(field, value) == "a" * 64
    assert hash_user_data({field: value}) == {field: "a" * 64}


def test_sdk_user_data_list_dedup_and_passthrough() -> None:
    user = hash_user_data(
        {
            "em": ["joe@eg.com", "mary@test.com", "mary@test.com"],
            "lead_id": 1234567890,
            "external_id": [],
            "ph": [],
        }
    )
    assert user == {"em": [sha("joe@eg.com"), sha("mary@test.com")], "lead_id": 1234567890}


# --- Parameter Builder vectors ----------------------------------------------------------------


def _pb_cases() -> list[Any]:
    cases = []
    for field, rows in VECTORS.items():
        if field.startswith("_"):
            continue
        for index, row in enumerate(rows):
            expected = row[2] if len(row) == 4 else row[1]
            # The Parameter Builder has one name rule for first and last names.
            for target in ("fn", "ln") if field == "fn" else (field,):
                cases.append(pytest.param(target, row[0], expected, id=f"{target}-{index}"))
    return cases


def test_vector_file_is_well_formed() -> None:
    fields = {key for key in VECTORS if not key.startswith("_")}
    assert fields == HASHED_FIELDS - {"ln"}
    for field in fields:
        for row in VECTORS[field]:
            assert len(row) in (2, 4), row
            if len(row) == 4:  # a departure: it must differ and say why
                assert row[2] != row[1], row
                assert row[3] in VECTORS["_reasons"], row
            else:  # the Parameter Builder's null has no equivalent without a stated reason
                assert row[1] is not None, row


@pytest.mark.parametrize(("field", "value", "expected"), _pb_cases())
def test_parameter_builder_vectors(field: str, value: str, expected: str) -> None:
    if expected == ERROR:
        with pytest.raises(InvalidUserData, match=rf"^user_data\.{field}: "):
            normalize(field, value)
    else:
        assert normalize(field, value) == expected


def test_parameter_builder_vectors_through_hash_user_data() -> None:
    for field, value, expected in (case.values for case in _pb_cases()):
        if expected == ERROR:
            continue
        wire = hash_user_data({field: value})
        if expected == "":
            assert wire == {}, (field, value)
        elif SHA_RE.fullmatch(expected) and expected == value.strip().lower():
            assert wire == {field: expected}, (field, value)
        else:
            assert wire == {field: sha(expected)}, (field, value)


def test_date_year_bounds_follow_the_parameter_builder() -> None:
    year = datetime.date.today().year
    assert normalize("db", f"01-01-{year}") == f"{year}0101"
    assert normalize("db", f"01-01-{year + 1}") == f"{year + 1}0101"
    with pytest.raises(InvalidUserData, match="outside 1800"):
        normalize("db", f"01-01-{year + 2}")


# --- Where the Business SDK is wrong and we are right -------------------------------------------

SDK_WRONG = [
    # field, input, country hint, what the SDK hashes (None: it raises), what Meta wants
    ("db", "2/16/1997", None, "2/16/1997", "19970216"),
    ("db", "1990-01-01", None, "1990-01-01", "19900101"),
    ("st", "California", None, "california", "ca"),
    ("st", "British Columbia", None, "britishcolumbia", "bc"),
    ("fn", "O'Connor", None, "o'connor", "oconnor"),
    ("ln", "Smith-Jones", None, "smith-jones", "smithjones"),
    ("country", "United States", None, None, "us"),
    ("country", "United Kingdom", None, None, "gb"),
    ("ph", "(650)555-1212", "us", "6505551212", "16505551212"),
    ("ph", "650 555 1212", "us", "6505551212", "16505551212"),
    ("ph", "1.650.555.1212", None, None, "16505551212"),
    ("ph", "+1-650-555-1212 ext 2", None, None, "16505551212"),
    ("zp", "940251234", None, "940251234", "94025"),
]


@pytest.mark.parametrize(("field", "value", "country", "sdk_text", "ours"), SDK_WRONG)
def test_where_the_sdk_is_wrong(
    field: str, value: str, country: str | None, sdk_text: str | None, ours: str
) -> None:
    if sdk_text is None:
        with pytest.raises((TypeError, ValueError)):
            Normalize.normalize_field(field, value)
    else:
        assert Normalize.normalize_field(field, value) == sha(sdk_text)
    assert normalize(field, value, country=country) == ours
    assert hash_user_data({field: value}, country=country) == {field: sha(ours)}


def test_sdk_sends_external_id_unhashed_we_hash_it_like_the_pixel() -> None:
    sdk = UserData(external_ids=["User 1"]).normalize()
    assert sdk["external_id"] == ["User 1"]
    assert hash_user_data({"external_id": ["User 1"]}) == {"external_id": [sha("user1")]}


def test_sdk_passes_md5_through_we_do_not() -> None:
    md5 = "D41D8CD98F00B204E9800998ECF8427E"
    assert Normalize.normalize_field("em", md5) == md5.lower()
    assert not is_hashed(md5)
    with pytest.raises(InvalidUserData, match="not an email address"):
        hash_user_data({"em": md5})


def test_sdk_accepts_a_broken_email_we_do_not() -> None:
    assert SHA_RE.fullmatch(Normalize.normalize_field("em", "324342@@@@bar.com"))
    with pytest.raises(InvalidUserData, match="not an email address"):
        normalize("em", "324342@@@@bar.com")


def test_sdk_list_order_is_a_set_ours_is_the_input_order() -> None:
    emails = [f"user{i}@example.com" for i in range(12)] + ["USER3@example.com"]
    ours = hash_user_data({"em": emails})["em"]
    assert ours == [sha(f"user{i}@example.com") for i in range(12)]
    sdk = UserData(emails=emails).normalize()["em"]
    assert sorted(sdk) == sorted(ours)  # same hashes; the SDK's order comes from a set


# --- Cross-check against the SDK where it is right ---------------------------------------------

SDK_AGREES = [
    ("em", "Joe@EG.com", None),
    ("em", " John_Smith@gmail.com ", None),
    ("em", "user.name+tag@domain.co.uk", None),
    ("ph", "+1 (650) 555-1212", None),
    ("ph", "001-650-555-1212", None),
    ("ph", "16505551212", None),
    ("ph", "+44 20 7946 0958", None),
    ("ph", "+442071838750", None),
    ("ph", "16505551212", "us"),
    ("ph", "442079460958", "gb"),
    ("zp", "94025-1234", None),
    ("zp", "SW1A 1AA", None),
    ("zp", "  98121", None),
    ("zp", "NR9 5AL", None),
    ("zp", "98-121-4892", None),
    ("ct", "Menlo Park", None),
    ("ct", "St. Louis", None),
    ("ct", "Winston-Salem", None),
    ("ct", "Washington D.C", None),
    ("st", "CA", None),
    ("st", " N.Y. ", None),
    ("st", "tx", None),
    ("country", "US", None),
    ("country", "u.s.", None),
    ("country", "GB", None),
    ("country", "de", None),
    ("ge", "m", None),
    ("ge", "f", None),
]


@pytest.mark.parametrize(("field", "value", "country"), SDK_AGREES)
def test_same_hash_as_the_sdk_where_it_is_right(
    field: str, value: str, country: str | None
) -> None:
    expected = Normalize.normalize_field(field, value)
    assert hash_user_data({field: value}, country=country) == {field: expected}


@given(st.from_regex(r"[A-Za-z]{1,12}( [A-Za-z]{1,12}){0,2}", fullmatch=True))
def test_ascii_city_names_hash_like_the_sdk(city: str) -> None:
    assert hash_user_data({"ct": city}) == {"ct": Normalize.normalize_field("ct", city)}


@given(st.from_regex(r"[a-z0-9._]{1,10}@[a-z0-9]{1,10}\.[a-z]{2,6}", fullmatch=True))
def test_plain_emails_hash_like_the_sdk(email: str) -> None:
    assume(".." not in email and not email.startswith(".") and ".@" not in email)
    assert hash_user_data({"em": email.upper()}) == {"em": Normalize.normalize_field("em", email)}


# --- Phone numbers with a country ----------------------------------------------------------------

PHONES = [
    # input, country hint, normalized
    ("(650)555-1212", "us", "16505551212"),
    ("650-555-1212", "ca", "16505551212"),
    ("1 650 555 1212", "us", "16505551212"),
    ("16505551212", "us", "16505551212"),
    ("+1 (650) 555-1212", "US", "16505551212"),
    ("(555) 123-4567", "United States", "15551234567"),
    ("+1 650 555 1212", "gb", "16505551212"),  # "+" wins over the hint
    ("011 44 20 7946 0958", "us", "442079460958"),  # NANP international prefix
    ("020 7946 0958", "gb", "442079460958"),
    ("020 7946 0958", "United Kingdom", "442079460958"),
    ("020 7946 0958", "U.K.", "442079460958"),
    ("20 7946 0958", "gb", "442079460958"),  # trunk 0 left out
    ("442079460958", "gb", "442079460958"),  # already international
    ("0044 20 7946 0958", "gb", "442079460958"),
    ("+44 (0)20 7946 0958", None, "442079460958"),
    ("07700 900123", "gb", "447700900123"),
    ("01 42 86 83 26", "fr", "33142868326"),
    ("030 12345678", "de", "493012345678"),
    ("4930123456", "de", "4930123456"),
    ("06 1234 5678", "it", "390612345678"),  # Italy keeps its leading 0
    ("393 123 4567", "it", "393931234567"),  # an Italian mobile that starts with 39
    ("39 312 345 6789", "it", "393123456789"),
    ("98765 43210", "in", "919876543210"),
    ("09876543210", "in", "919876543210"),
    ("8 (916) 123-45-67", "ru", "79161234567"),  # trunk prefix 8
    ("06 1 234 5678", "hu", "3612345678"),  # trunk prefix 06
    ("8 029 123-45-67", "by", "375291234567"),  # trunk prefix 80
    ("0411 222 333", "au", "61411222333"),
    ("0011 44 20 7946 0958", "au", "442079460958"),  # Australia's international prefix
    ("55 1234 5678", "mx", "525512345678"),
    ("(11) 98765-4321", "br", "5511987654321"),
    ("090-1234-5678", "jp", "819012345678"),
    ("٠٥٥٥١٢٣٤٥٦٧", None, "5551234567"),  # Arabic-Indic digits
    ("0000000", "us", ""),
]


@pytest.mark.parametrize(("value", "country", "expected"), PHONES)
def test_phone_numbers_get_their_calling_code(
    value: str, country: str | None, expected: str
) -> None:
    assert normalize("ph", value, country=country) == expected


@pytest.mark.parametrize(
    ("value", "country", "message"),
    [
        ("555-1212", "us", "not a valid phone number for US"),
        ("1234567890", "us", "not a valid phone number for US"),
        ("12345", "gb", "not a valid phone number for GB"),
        ("+999 123 4567", None, "does not start with a country calling code"),
        ("650 555 1212", "Atlantis", "country hint 'xxxxxxxx' is not a country"),
        ("650 555 1212", "Narnia", "country hint 'xxxxxx' is not a country"),
        ("1-800-FLOWERS", "us", "contains letters"),
        ("911", None, "has 3 digits"),
    ],
)
def test_phone_numbers_that_cannot_be_completed(
    value: str, country: str | None, message: str
) -> None:
    with pytest.raises(InvalidUserData, match=re.escape(message)):
        normalize("ph", value, country=country)


PHONE_COUNTRIES = ["us", "gb", "fr", "in", "de", "it", "au", "br", "jp", "ru"]


@st.composite
def national_numbers(draw: st.DrawFn) -> tuple[str, str]:
    region = draw(st.sampled_from(PHONE_COUNTRIES))
    plan = _geo.PHONE_PLANS[region]
    lengths = plan.national_lengths
    pattern = st.from_regex(f"(?:{plan.national_pattern})", fullmatch=True)
    nsn = draw(pattern.filter(lambda digits: len(digits) in lengths and digits.isascii()))
    return region, nsn


def _reads_as_international(nsn: str, plan: _geo.PhonePlan) -> bool:
    rest = nsn[len(plan.calling_code) :]
    return (
        nsn.startswith(plan.calling_code)
        and len(rest) in plan.national_lengths
        and re.fullmatch(plan.national_pattern, rest) is not None
    )


@given(national_numbers(), st.sampled_from(["trunk", "bare", "international", "plus"]))
def test_every_way_of_writing_a_number_gives_the_same_digits(
    number: tuple[str, str], form: str
) -> None:
    region, nsn = number
    plan = _geo.PHONE_PLANS[region]
    trunk = plan.trunk_prefixes[-1] if plan.trunk_prefixes else ""
    assume(not nsn.startswith(tuple(plan.trunk_prefixes)) or form != "bare")
    assume(not _reads_as_international(nsn, plan) or form not in ("bare", "trunk"))
    idd = plan.international_prefix or "00"
    # A national number can't begin like a call abroad ("00", Japan's "010"): skip those.
    assume(not (form == "bare" and nsn.startswith(("00", idd))))
    assume(not (form == "trunk" and (trunk + nsn).startswith(("00", idd))))
    # shorter or longer than E.164 allows (7 to 15 digits) is refused whatever the country,
    # though the plans know longer national numbers (Germany's 14 digits after 49)
    assume(7 <= len(plan.calling_code + nsn) <= 15)
    written = {
        "trunk": f"{trunk} {nsn}",
        "bare": nsn,
        "international": f"{plan.calling_code}{nsn}",
        "plus": f"+{plan.calling_code} {nsn}",
    }[form]
    once = normalize("ph", written, country=region)
    assert once == plan.calling_code + nsn
    assert normalize("ph", once, country=region) == once


# --- Properties ------------------------------------------------------------------------------

SAMPLE_VALUES = {
    "em": ["John_Smith@gmail.com", " A@B.co ", "ü@bücher.de"],
    "ph": ["+1 (650) 555-1212", "0044 20 7946 0958", "555.123.4567"],
    "fn": ["Mary", "José María", "O’Connor", "李明"],
    "ln": ["Smith-Jones", "d'Angelo", "e\u0301"],
    "db": ["2/16/1997", "December 31, 1990", "19901231"],
    "ge": ["Male", "woman"],
    "ct": ["San José", "Menlo Park"],
    "st": ["California", "N.Y.", "Bavaria"],
    "zp": ["94025-1234", "SW1A 1AA", "940251234"],
    "country": ["United States", "U.K.", "Côte d'Ivoire", "xyz"],
    "external_id": ["USER-ID 456", "\u00a0abc\u00a0"],
}
PADDING = " \t\n\r\u00a0\u3000"
any_value = st.one_of(
    st.text(max_size=40),
    st.sampled_from([value for values in SAMPLE_VALUES.values() for value in values]),
)


@given(st.sampled_from(sorted(HASHED_FIELDS)), any_value)
def test_normalize_is_idempotent(field: str, value: str) -> None:
    try:
        once = normalize(field, value)
    except InvalidUserData:
        return  # the property is about values that normalize
    assert normalize(field, once) == once


@given(
    st.sampled_from(sorted(HASHED_FIELDS)),
    st.from_regex(f"[{PADDING}]*[0-9a-fA-F]{{64}}[{PADDING}]*", fullmatch=True),
)
def test_hashing_an_already_hashed_value_is_identity(field: str, digest: str) -> None:
    bare = digest.strip(PADDING).lower()
    assert is_hashed(digest)
    assert normalize(field, digest) == bare
    assert hash_user_data({field: digest}) == {field: bare}
    assert hash_user_data({field: [digest, digest.upper()]}) == {field: [bare]}


@given(
    st.dictionaries(
        st.sampled_from(sorted(HASHED_FIELDS)),
        st.one_of(any_value, st.lists(any_value, max_size=4)),
    )
)
def test_hashed_fields_are_always_lowercase_hex(mapping: dict[str, Any]) -> None:
    try:
        wire = hash_user_data(mapping)
    except InvalidUserData:
        return
    for key, value in wire.items():
        values = value if isinstance(value, list) else [value]
        assert values, key
        assert all(isinstance(v, str) and SHA_RE.fullmatch(v) for v in values), (key, value)


simple_email = st.from_regex(r"[a-z0-9]{1,8}@[a-z]{1,8}\.[a-z]{2,4}", fullmatch=True)


@given(st.lists(st.tuples(simple_email, st.booleans(), st.sampled_from(["", " ", "\t"]))))
def test_lists_keep_their_order_without_duplicates(items: list[tuple[str, bool, str]]) -> None:
    written = [pad + (email.upper() if upper else email) + pad for email, upper, pad in items]
    expected = list(dict.fromkeys(sha(email) for email, _, _ in items))
    assert hash_user_data({"em": written}) == ({"em": expected} if expected else {})


# --- hash_user_data behaviour -----------------------------------------------------------------


def test_plain_fields_are_only_trimmed() -> None:
    fbc = "fb.1.1554763741205.AbCdEfGhIjKlMnOpQrStUvWxYz1234567890"
    user = hash_user_data(
        {
            "fbc": f"  {fbc} ",
            "fbp": "fb.1.1596403881668.1116446470",
            "client_ip_address": " 2001:0db8:85a3:0000:0000:8a2e:0370:7334 ",
            "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
            "fb_login_id": 1234567890,
            "lead_id": 987654321,
            "subscription_id": "SUB-1",
            "madid": "38400000-8cf0-11bd-b23e-10b96e40000d",
        }
    )
    assert user == {
        "fbc": fbc,
        "fbp": "fb.1.1596403881668.1116446470",
        "client_ip_address": "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        "fb_login_id": 1234567890,
        "lead_id": 987654321,
        "subscription_id": "SUB-1",
        "madid": "38400000-8cf0-11bd-b23e-10b96e40000d",
    }


@pytest.mark.parametrize("field", sorted(PLAIN_FIELDS))
def test_normalize_leaves_plain_fields_as_given(field: str) -> None:
    assert normalize(field, "  AbC.123  ") == "AbC.123"


def test_empty_values_are_dropped() -> None:
    user = hash_user_data(
        {
            "em": None,
            "ph": "",
            "fn": [],
            "ln": "   ",
            "ct": ["", None],
            "fbc": None,
            "fbp": "",
            "client_user_agent": "  ",
            "st": "!!!",
            "country": "...",
        }
    )
    assert user == {}


def test_names_that_normalize_to_nothing_are_dropped() -> None:
    assert hash_user_data({"fn": "!!!", "ln": ["---", "Smith"]}) == {"ln": [sha("smith")]}


def test_unknown_keys_pass_through_unchanged() -> None:
    user = hash_user_data({"em": "a@b.co", "email": " Raw@Mail.com ", "custom": {"x": 1}})
    assert user == {"em": sha("a@b.co"), "email": " Raw@Mail.com ", "custom": {"x": 1}}


def test_country_hint_comes_from_the_mapping() -> None:
    user = hash_user_data({"ph": "020 7946 0958", "country": "United Kingdom"})
    assert user == {"ph": sha("442079460958"), "country": sha("gb")}
    user = hash_user_data({"ph": "020 7946 0958", "country": ["gb", "fr"]})
    assert user["ph"] == sha("442079460958")


def test_the_country_keyword_wins_over_the_mapping() -> None:
    user = hash_user_data({"ph": "01 42 86 83 26", "country": "gb"}, country="fr")
    assert user["ph"] == sha("33142868326")


def test_a_hashed_or_unknown_customer_country_gives_no_hint() -> None:
    hashed_us = sha("us")
    user = hash_user_data({"ph": "0650 555 1212", "country": hashed_us})
    assert user == {"ph": sha("6505551212"), "country": hashed_us}
    user = hash_user_data({"ph": "0650 555 1212", "country": "Atlantis"})
    assert user == {"ph": sha("6505551212"), "country": sha("at")}


def test_zip_plus_four_without_dash_only_where_us_zip_codes_are_used() -> None:
    assert normalize("zp", "94025 1234", country="us") == "94025"
    assert normalize("zp", "940251234", country="pr") == "94025"
    assert normalize("zp", "940251234", country="br") == "940251234"


def test_lists_work_for_every_hashed_field() -> None:
    mapping = {
        "em": ["a@b.co", "c@d.co"],
        "ph": ["+1 650 555 1212", "+44 20 7946 0958"],
        "fn": ["Mary", "Ann"],
        "ln": ["Smith", "Jones"],
        "db": ["1990-12-31", "2/16/1997"],
        "ge": ["f", "m"],
        "ct": ["Paris", "London"],
        "st": ["California", "Texas"],
        "zp": ["94025", "SW1A 1AA"],
        "country": ["us", "gb"],
        "external_id": ["A 1", "B 2"],
    }
    expected = {
        "em": ["a@b.co", "c@d.co"],
        "ph": ["16505551212", "442079460958"],
        "fn": ["mary", "ann"],
        "ln": ["smith", "jones"],
        "db": ["19901231", "19970216"],
        "ge": ["f", "m"],
        "ct": ["paris", "london"],
        "st": ["ca", "tx"],
        "zp": ["94025", "sw1a1aa"],
        "country": ["us", "gb"],
        "external_id": ["a1", "b2"],
    }
    wire = hash_user_data(mapping)
    assert wire == {key: [sha(v) for v in values] for key, values in expected.items()}


def test_a_date_object_is_a_date_of_birth() -> None:
    assert hash_user_data({"db": datetime.date(1997, 2, 16)}) == {"db": sha("19970216")}


@pytest.mark.parametrize("value", [94025, 6505551212, 1.5, b"a@b.co"])
def test_non_text_hashed_values_are_refused(value: object) -> None:
    with pytest.raises(InvalidUserData, match="expected a string"):
        hash_user_data({"zp": value})


def test_one_bad_value_names_its_field() -> None:
    with pytest.raises(InvalidUserData) as caught:
        hash_user_data({"em": "a@b.co", "db": "31/02/1990"})
    assert caught.value.field == "db"
    assert str(caught.value).startswith("user_data.db: '99/99/9999'")  # its shape, not its value


# --- normalize() contract ---------------------------------------------------------------------


def test_error_message_names_the_field_and_the_reason() -> None:
    with pytest.raises(InvalidUserData) as caught:
        normalize("em", "foo@")
    assert str(caught.value) == "user_data.em: 'xxx@' is not an email address"
    assert caught.value.field == "em"
    assert isinstance(caught.value, ValueError)


def test_unknown_field_is_refused() -> None:
    with pytest.raises(InvalidUserData, match=r"^user_data\.email: is not a customer information"):
        normalize("email", "a@b.co")


def test_field_sets_are_what_meta_documents() -> None:
    hashed = "em ph fn ln db ge ct st zp country external_id"
    assert sorted(HASHED_FIELDS) == sorted(hashed.split())
    assert not HASHED_FIELDS & PLAIN_FIELDS
    assert {"fbc", "fbp", "client_ip_address", "client_user_agent", "ig_sid"} <= PLAIN_FIELDS


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a" * 64, True),
        ("A" * 64, True),
        ("  " + "0f" * 32 + "\n", True),
        ("d41d8cd98f00b204e9800998ecf8427e", False),  # MD5 is not accepted as hashed
        ("a" * 63, False),
        ("a" * 65, False),
        ("g" * 64, False),
        ("a" * 32 + " " + "a" * 32, False),
    ],
)
def test_is_hashed(value: str, expected: bool) -> None:
    assert is_hashed(value) is expected


def test_sha256_hex_is_lowercase_utf8() -> None:
    assert sha256_hex("정") == "8fa8cd9c440be61d0151429310034083132b35975c4bea67fdd74158eb51db14"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("fn", "O’Connor", "oconnor"),  # typographic apostrophe
        ("fn", "Jose\u0301", "josé"),  # decomposed accent is composed
        ("fn", "\u200bAnna\u200e", "anna"),  # invisible characters
        ("em", "  Ü@Bücher.DE ", "ü@bücher.de"),
        ("db", "31 Dec 1990", "19901231"),
        ("db", "December 31st, 1990", "19901231"),
        ("db", "1990-12-31T08:30:00Z", "19901231"),
        ("st", "Québec", "qc"),
        ("st", "District of Columbia", "dc"),
        ("st", "Colombie-Britannique", "bc"),
        ("country", "Côte d'Ivoire", "ci"),
        ("country", "Republic of Indonesia", "id"),  # PB's "ind" would say India
        ("country", "DEU", "de"),
        ("country", "England", "gb"),
        ("country", "America", "us"),
        ("external_id", "\ufeffUSER 1\u3000", "user1"),
        ("zp", "SW1A 1AA", "sw1a1aa"),
    ],
)
def test_beyond_the_parameter_builder(field: str, value: str, expected: str) -> None:
    assert normalize(field, value) == expected


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("db", "31/02/1990", "not a real date"),
        ("db", "May 1990", "is not a date of birth"),
        ("db", "May 31 1990 June", "expected a day, a month and a year"),
        ("db", "12311990", "its year is outside 1800"),
        ("ge", "other", "is not a gender Meta accepts"),
        ("ct", "Москва", "no Latin letters"),
        ("ct", "123Angeles", "does not start with a letter"),
        ("zp", "-12345", "nothing usable before the first '-'"),
        ("em", "a b@c.de", "not an email address"),
        ("em", "x" * 65 + "@example.com", "not an email address"),
    ],
)
def test_values_that_cannot_be_normalized(field: str, value: str, message: str) -> None:
    with pytest.raises(InvalidUserData, match=re.escape(message)):
        normalize(field, value)
