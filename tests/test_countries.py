"""The shared country alias table and the resolution of requested groups."""

from __future__ import annotations

import pytest

from scpo.errors import InputError
from scpo.load.countries import ALIASES, PAPER_COUNTRIES, canonical_country, group_map, resolve_groups


@pytest.mark.parametrize(
    "raw, canon",
    [
        ("S. Africa", "South Africa"),
        ("South Africa", "South Africa"),
        ("Britain", "United Kingdom"),
        ("Great Britain", "United Kingdom"),
        ("S. Korea", "South Korea"),
        ("Czech Rep.", "Czechia"),
        ("Czech Republic", "Czechia"),
        ("U.S.", "United States"),
        ("USA", "United States"),
        ("  s. africa ", "South Africa"),
        ("Chile", "Chile"),
        ("group-a", "group-a"),
        ("Northern Ireland", "Northern Ireland"),
    ],
)
def test_canonical_country(raw: str, canon: str) -> None:
    assert canonical_country(raw) == canon


def test_aliases_are_unambiguous() -> None:
    seen: dict[str, str] = {}
    for canon, raws in ALIASES.items():
        for r in (canon, *raws):
            assert seen.setdefault(r.casefold(), canon) == canon, r


def test_non_national_sample_is_never_merged() -> None:
    assert canonical_country("S. Africa (Non-national sample)") == "South Africa (Non-national sample)"
    names = ["S. Africa", "S. Africa (Non-national sample)", "India (Non-national sample)"]
    gm = group_map(names)
    assert gm["S. Africa"] == "South Africa"
    assert gm["S. Africa (Non-national sample)"] != "South Africa"
    assert gm["India (Non-national sample)"] == "India (Non-national sample)"
    assert resolve_groups(["South Africa"], names) == {"South Africa": ["S. Africa"]}
    # only the non-national sample present: requesting the plain country must fail, not merge
    with pytest.raises(InputError):
        resolve_groups(["India"], ["India (Non-national sample)"])


def test_current_national_sample_maps_only_without_plain_name() -> None:
    raw = "India (Current national sample)"
    assert canonical_country(raw) == raw  # no context: keep the suffix
    assert canonical_country(raw, present=[raw, "India (Old national sample)"]) == "India"
    assert canonical_country(raw, present=[raw, "India"]) == raw
    gm = group_map([raw, "India (Old national sample)", "India (Non-national sample)"])
    assert gm == {
        raw: "India",
        "India (Old national sample)": "India (Old national sample)",
        "India (Non-national sample)": "India (Non-national sample)",
    }


def test_resolve_aliases_and_spellings() -> None:
    raw = ["Britain", "Great Britain", "S. Africa", "Chile", "China"]
    assert resolve_groups(["United Kingdom"], raw) == {"United Kingdom": ["Britain", "Great Britain"]}
    assert resolve_groups(["UK", "united kingdom"], raw) == {"United Kingdom": ["Britain", "Great Britain"]}
    assert resolve_groups(["S. Africa"], raw) == {"South Africa": ["S. Africa"]}
    assert resolve_groups(["south africa"], raw) == {"South Africa": ["S. Africa"]}
    out = resolve_groups(None, raw)
    assert list(out) == sorted(out) and set(out) == {"United Kingdom", "South Africa", "Chile", "China"}


def test_unknown_group_lists_closest_names() -> None:
    with pytest.raises(InputError) as ei:
        resolve_groups(["Chilee"], ["Chile", "China", "Mexico"], file="data.csv")
    e = ei.value
    assert e.file == "data.csv" and e.field == "group"
    assert "Chile" in str(e) and "closest" in str(e)


def test_non_country_groups_pass_through_exactly() -> None:
    raw = ["group-a", "group-b"]
    assert resolve_groups(["group-a"], raw) == {"group-a": ["group-a"]}
    with pytest.raises(InputError, match="group-a"):
        resolve_groups(["group-z"], raw)


def test_paper_countries() -> None:
    assert len(PAPER_COUNTRIES) == 7 and "South Africa" in PAPER_COUNTRIES
    assert all(canonical_country(c) == c for c in PAPER_COUNTRIES)
