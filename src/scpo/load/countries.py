"""One table of country names shared by every loader, and the resolution of requested groups.

Surveys spell countries their own way: GlobalOpinionQA (Pew and WVS) writes ``S. Africa``,
``Britain``, ``Czech Rep.``; PRISM writes ``South Africa``, ``United Kingdom``. :data:`ALIASES`
maps each canonical name (the one scpo reports) to the raw spellings that mean the same
population, and every loader names its groups through :func:`canonical_country`.

Samples with a parenthesised suffix are handled as follows (the suffix is never silently
dropped):

* ``X (Non-national sample)``, ``X (Old national sample)`` and any other suffix name a *different*
  sample of the country and stay their own group, named by the canonical country followed by the
  unchanged suffix: ``S. Africa (Non-national sample)`` becomes the group
  ``South Africa (Non-national sample)`` (its raw spelling is kept in ``raw_group`` and is also
  accepted when a user requests groups).
* ``X (Current national sample)`` is the country's current national sample. It maps to the plain
  country ``X`` only when the source holds no sample under a plain name of ``X`` (GlobalOpinionQA
  has ``India (Current national sample)`` and no plain ``India``, so it is ``India``); when a plain
  sample exists it stays its own group. Without knowing the other names of the source
  (``present=None``) the suffix is kept.

Group names are Unicode-normalised to NFC first: ``"Curac\u0327ao"`` (decomposed) and ``"Curaçao"``
(composed) print the same and are one group, named in NFC; ``raw_group`` keeps the source's
spelling. Requested names (``--groups``, ``--population-groups``) are normalised the same way.

Names the table does not know (a user's ``group-a``, a country spelled canonically) pass through
unchanged apart from surrounding whitespace, so user files with non-country groups work as is.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable

from ..errors import InputError

PAPER_COUNTRIES = ["Chile", "South Africa", "New Zealand", "Australia", "Mexico", "Israel", "Canada"]
"""Default groups of the ``goqa`` and ``prism`` data sets (the countries of the SCPO paper)."""

ALIASES: dict[str, tuple[str, ...]] = {
    "United States": ("U.S.", "US", "USA", "U.S.A.", "United States of America"),
    "United Kingdom": ("Britain", "Great Britain", "UK", "U.K."),
    "South Africa": ("S. Africa",),
    "South Korea": ("S. Korea", "Korea, South", "Republic of Korea", "Korea, Republic of"),
    "Czechia": ("Czech Rep.", "Czech Republic"),
    "Palestine": ("Palest. ter.", "Palestinian territories", "Palestinian Territories", "State of Palestine"),
    "Taiwan": ("Taiwan ROC",),
    "Hong Kong": ("Hong Kong SAR",),
    "Macau": ("Macau SAR", "Macao", "Macao SAR"),
    "Bosnia and Herzegovina": ("Bosnia Herzegovina", "Bosnia & Herzegovina", "Bosnia"),
    "North Macedonia": ("Macedonia",),
    "Russia": ("Russian Federation",),
    "Ivory Coast": ("Côte d'Ivoire", "Cote d'Ivoire", "Cote dIvoire"),
    "Vietnam": ("Viet Nam",),
    "Iran": ("Iran, Islamic Republic of",),
    "Turkey": ("Türkiye", "Turkiye"),
    "Netherlands": ("The Netherlands",),
    "Slovakia": ("Slovak Republic",),
}
"""Canonical country name -> raw spellings of the same population in the sources.

``Northern Ireland`` is deliberately *not* an alias of ``United Kingdom``: the World Values
Survey reports it as a sample of its own, next to ``Great Britain``.
"""

CURRENT_NATIONAL_SUFFIX = "Current national sample"
"""The only suffix that may map to the plain country (see the module docstring)."""

_SUFFIX = re.compile(r"^(?P<base>.*?)\s*\((?P<suffix>[^()]*)\)\s*$")
_SPACES = re.compile(r"\s+")


def nfc(name: str) -> str:
    """The NFC form of a name (one code point sequence for what prints the same)."""
    return unicodedata.normalize("NFC", str(name))


def _norm(name: str) -> str:
    """Comparison key: NFC, case-folded, whitespace collapsed."""
    return nfc(_SPACES.sub(" ", nfc(name)).strip().casefold())


_ALIAS_INDEX: dict[str, str] = {}
for _canon, _raws in ALIASES.items():
    _ALIAS_INDEX[_norm(_canon)] = _canon
    for _raw in _raws:
        _ALIAS_INDEX[_norm(_raw)] = _canon


def _plain(name: str) -> str:
    """Canonical name of a suffix-free spelling; unknown names pass through (whitespace collapsed)."""
    clean = _SPACES.sub(" ", name).strip()
    return _ALIAS_INDEX.get(_norm(clean), clean)


def split_suffix(raw: str) -> tuple[str, str | None]:
    """``"India (Current national sample)"`` -> ``("India", "Current national sample")``.

    A name without a trailing parenthesised part gives ``(name, None)``.
    """
    clean = _SPACES.sub(" ", str(raw)).strip()
    m = _SUFFIX.match(clean)
    if not m or not m.group("base"):
        return clean, None
    return m.group("base"), m.group("suffix").strip()


def canonical_country(raw: str, present: Iterable[str] | None = None) -> str:
    """The group name scpo uses for the raw spelling ``raw``.

    ``present`` is every raw name of the source; it only matters for a
    ``(Current national sample)`` suffix, which maps to the plain country when no name in
    ``present`` is a plain (suffix-free) spelling of that country. Unknown names pass through.
    """
    raw = nfc(raw)
    if present is not None:
        present = [nfc(p) for p in present]
    if _norm(raw) in _ALIAS_INDEX:  # a full spelling in the table, suffix or not
        return _ALIAS_INDEX[_norm(raw)]
    base, suffix = split_suffix(raw)
    if suffix is None:
        return _plain(base)
    canon_base = _plain(base)
    if present is not None and _norm(suffix) == _norm(CURRENT_NATIONAL_SUFFIX):
        plain_exists = any(
            split_suffix(other)[1] is None and _plain(split_suffix(other)[0]) == canon_base for other in present
        )
        if not plain_exists:
            return canon_base
    return f"{canon_base} ({suffix})"


def group_map(raw_names: Iterable[str]) -> dict[str, str]:
    """Raw name -> group name for every distinct raw name of a source (context-aware)."""
    names = sorted({str(n) for n in raw_names})
    return {n: canonical_country(n, present=names) for n in names}


def resolve_groups(
    requested: list[str] | None,
    raw_names: Iterable[str],
    *,
    file: str | None = None,
) -> dict[str, list[str]]:
    """Map requested groups to the raw names of the source.

    Returns canonical group -> sorted raw names that it matched, in the order requested
    (``requested=None``: every group of the source, sorted). A requested name may be the
    canonical name, any alias, a raw spelling of the source or the group name in another case
    or spacing; unknown non-country names match exactly when the source has them. A requested
    group matching nothing raises :class:`InputError` naming the closest groups (difflib).
    """
    mapping = group_map(raw_names)
    groups: dict[str, list[str]] = {}
    for raw, group in mapping.items():
        groups.setdefault(group, []).append(raw)
    if requested is None:
        return {g: sorted(groups[g]) for g in sorted(groups)}

    by_norm: dict[str, set[str]] = {}
    for g, raws in groups.items():
        by_norm.setdefault(_norm(g), set()).add(g)
        for r in raws:
            by_norm.setdefault(_norm(r), set()).add(g)

    out: dict[str, list[str]] = {}
    for req in requested:
        req_s = nfc(req)
        if req_s in groups:  # exact group name
            match = req_s
        elif req_s in mapping:  # exact raw spelling
            match = mapping[req_s]
        else:
            candidates = by_norm.get(_norm(req_s)) or by_norm.get(_norm(canonical_country(req_s)), set())
            if len(candidates) != 1:
                pool = sorted(set(groups) | set(mapping))
                close = difflib.get_close_matches(req_s, pool, n=5, cutoff=0.5)
                if not close:
                    low = {p.casefold(): p for p in pool}
                    close = [low[c] for c in difflib.get_close_matches(req_s.casefold(), list(low), n=5, cutoff=0.3)]
                if len(candidates) > 1:
                    msg = f"group {req_s!r} is ambiguous: it matches {sorted(candidates)}; give the exact name"
                else:
                    hint = f"closest names: {', '.join(close)}" if close else "no similar name"
                    msg = f"group {req_s!r} matches nothing in the data ({len(groups)} groups; {hint})"
                raise InputError(msg, file=file, field="group")
            match = next(iter(candidates))
        if match not in out:
            out[match] = sorted(groups[match])
    return out
