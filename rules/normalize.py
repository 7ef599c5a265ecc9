"""Value normalisation for trait and property matching (text, numbers, countries, email domains),
and the predicate builders the model compiler needs on the hot path (the str memo, path prefixes).

Marketing data is messy: "Prof.", "PROFESSOR of Psychology", "United Kingdom", "uk",
"1,000+" and "Jane@Example.COM" must all match the rules a person wrote. Everything that
turns a raw trait value into the comparable form lives here, so the model compiler and
the explain output agree on it.
"""

from __future__ import annotations

import re
from typing import Any, Callable

_NON_WORD = re.compile(r"[^\w+]+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

# Common country spellings -> ISO 3166 alpha-2. Two-letter codes pass through upper-cased.
COUNTRY_ALIASES = {
    "united states": "US", "united states of america": "US", "usa": "US", "u s a": "US", "u s": "US",
    "america": "US", "canada": "CA", "united kingdom": "GB", "uk": "GB", "u k": "GB", "great britain": "GB",
    "britain": "GB", "england": "GB", "scotland": "GB", "wales": "GB", "northern ireland": "GB",
    "germany": "DE", "deutschland": "DE", "france": "FR", "netherlands": "NL", "the netherlands": "NL",
    "holland": "NL", "australia": "AU", "ireland": "IE", "new zealand": "NZ", "sweden": "SE",
    "denmark": "DK", "norway": "NO", "finland": "FI", "switzerland": "CH", "austria": "AT",
    "belgium": "BE", "spain": "ES", "italy": "IT", "portugal": "PT", "poland": "PL", "india": "IN",
    "brazil": "BR", "mexico": "MX", "japan": "JP", "china": "CN", "singapore": "SG",
    "south africa": "ZA", "israel": "IL",
}


def text(value: Any) -> str | None:
    """Lower case, punctuation to single spaces: "Prof. (Psychology)" -> "prof psychology"."""
    if value is None or isinstance(value, (dict, list)):
        return None
    out = _NON_WORD.sub(" ", str(value).lower()).strip()
    return out or None


def number(value: Any) -> float | None:
    """Numbers and numeric strings ("1,000+", "100-999" -> lower bound 100)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    match = _NUMBER.search(str(value).replace(",", "").replace("_", ""))
    return float(match.group()) if match else None


def country(value: Any) -> str | None:
    norm = text(value)
    if norm is None:
        return None
    if norm in COUNTRY_ALIASES:
        return COUNTRY_ALIASES[norm]
    if len(norm) == 2 and norm.isalpha():
        return norm.upper()
    return norm.upper()


def email_domain(value: Any) -> str | None:
    if not isinstance(value, str) or "@" not in value:
        return None
    domain = value.rsplit("@", 1)[1].strip().lower().rstrip(".")
    return domain or None


NORMALISERS = {"text": text, "number": number, "country": country, "email_domain": email_domain}


def flatten(traits: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested trait dicts to dotted paths: {"company": {"industry": x}} -> {"company.industry": x}.

    Flat keys that already contain dots ("company.industry") land on the same path, so the
    two spellings Segment clients use are one trait inside leadpulse. Lists are leaves.
    """
    out: dict[str, Any] = {}
    for key, value in traits.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def memo_str(pred: Callable[[Any], Any], size: int = 4096) -> Callable[[Any], bool]:
    """``pred`` with its answers for ``str`` values remembered (at most ``size``, then forgotten at once).

    Trait predicates (text normalisation + regex, country aliases, email domains) are pure
    functions of the value, and profiles repeat the same titles, industries and domains, so a
    trait change re-scores the fit from a dict lookup. Only exact ``str`` values are cached: other
    types (numbers, where 0.0 and -0.0 hash alike but print differently) always call ``pred``.
    Made here so that the compiled twin of this module makes the wrapper a compiled closure: a
    profile re-score calls it for every fit option it tries.
    """
    cache: dict[str, bool] = {}

    def memo(value: Any) -> bool:
        if type(value) is not str:
            return pred(value)
        hit = cache.get(value)
        if hit is None:
            if len(cache) >= size:
                cache.clear()
            hit = cache[value] = bool(pred(value))
        return hit

    return memo


def url_path(url: Any) -> str | None:
    """The path of a page URL (no query, no fragment), for ``path`` filters on events that carry
    only a url: Segment page calls carry both; a webhook-only source may send just the url."""
    if not isinstance(url, str):
        return None
    rest = url.split("://", 1)[-1]
    slash = rest.find("/")
    if slash < 0:
        return "/"
    return rest[slash:].split("?", 1)[0].split("#", 1)[0]


def prefix_where(key: str, prefix: str | list[str]) -> Callable[[dict[str, Any]], bool]:
    """A property filter: ``props[key]`` starts with one of the prefixes, case-insensitively.

    The common hot-path filter (page path prefix, e.g. careers pages), made here so that the
    compiled twin of this module makes it a compiled closure: it runs on every page view.
    """
    prefixes = tuple(p.strip().lower() for p in ([prefix] if isinstance(prefix, str) else prefix) if p.strip())
    from_url = key == "path"
    # Sites have few distinct paths: the answer per path is remembered, which saves a lower()
    # copy and a prefix scan on every page view.
    starts = memo_str(lambda path: path.lower().startswith(prefixes))

    def has_prefix(props: dict[str, Any]) -> bool:
        value = props.get(key)
        if value is None and from_url:
            value = url_path(props.get("url"))
        return isinstance(value, str) and starts(value)

    return has_prefix


# Last: run the compiled twin of this module when it was built from this exact file (rules/native.py).
from rules.native import adopt  # noqa: E402

adopt(globals())
