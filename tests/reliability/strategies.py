"""Hypothesis strategies shared by the fuzz tests of this tier."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from hypothesis import strategies as st

from queuectl_kombu import settings as settings_mod


#: JSON values as the json module reads them (no NaN or infinities), nested a little.
strict_json: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)

#: The bounds of each setting as documented ("every setting has a maximum"): kind, minimum,
#: whether the minimum itself is refused, maximum. Written out here, not read from settings.py,
#: so that the oracle below is independent of the code it checks.
LIMITS: dict[str, tuple[type, float, bool, float]] = {
    "max_retries": (int, 0, False, 10_000),
    "backoff_base": (float, 1, False, 3600),
    "visibility_timeout": (float, 0, True, 7 * 86400),
    "retention": (float, 0, False, 10 * 365 * 86400),
}


class Expected(NamedTuple):
    """What settings.parse(key, value) must do: return (name, value) when `refused` is empty,
    else raise InvalidConfig with a message that starts with one of `refused`."""

    name: str | None
    value: Any
    refused: tuple[str, ...]


def expected_setting(key: str, value: Any) -> Expected:
    """The oracle of the config fuzz tests, worked out from the documented rules: a known key
    (any case, "-" for "_", surrounding blanks), a number or a string int()/float() reads, finite,
    whole for max_retries, within the setting's bounds; anything else is InvalidConfig, an
    overflow included."""
    name = key.strip().replace("-", "_").lower()
    if name not in LIMITS:
        return Expected(None, None, ("unknown config key",))
    kind, low, exclusive, high = LIMITS[name]
    kind_word = "a whole number" if kind is int else "a number"

    def refuse(*phrases: str) -> Expected:
        return Expected(name, None, tuple(f"{name} must be {p}" for p in phrases))

    below = refuse(f"{'greater than' if exclusive else 'at least'} {low:g}")
    above = refuse(f"at most {high:g}")
    if isinstance(value, bool):
        return refuse("a number")
    if isinstance(value, str):
        try:  # Python's spellings: " 5 ", "+3", "1_000", "\u0663"; for float also "1e3", "inf", "nan"
            number: Any = kind(value)
        except ValueError:  # int() of "3.0" or "1e3", or of more than 4300 digits
            return refuse(kind_word)
    elif isinstance(value, (int, float)):
        number = value
    else:
        return refuse(kind_word)
    if isinstance(number, float):
        if not math.isfinite(number):
            return refuse("a finite number")
        if kind is int and not number.is_integer():
            return refuse("a whole number")
    elif kind is float and abs(number) > 10**300:  # no float holds it: refused as such or as out of bounds
        return Expected(name, None, refuse("a number", "a finite number").refused + (below, above)[number > 0].refused)
    # Exact comparisons: an int against a float bound never overflows.
    if number < low or (exclusive and number == low):
        return below
    if number > high:
        return above
    return Expected(name, kind(number), ())


def boundaries() -> list[tuple[str, Any]]:
    """(key, value) at, just inside and just outside every bound of every setting."""
    cases: list[tuple[str, Any]] = []
    for name, (kind, low, _, high) in LIMITS.items():
        for bound in (low, high):
            cases += [(name, kind(bound)), (name, bound - 1), (name, bound + 1), (name, str(kind(bound)))]
            cases += [(name, math.nextafter(float(bound), -math.inf)), (name, math.nextafter(float(bound), math.inf))]
        cases += [(name, 2**63), (name, 2**1024), (name, -(2**1024)), (name, 10**400), (name, 1e308)]
    return cases


#: Anything a caller may hand to a setting: JSON, Python numbers of every size (beyond a float's
#: range too), NaN and infinities, values on and beside every bound, and strings as the CLI
#: passes them.
config_values: st.SearchStrategy[Any] = st.one_of(
    strict_json,
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1.7976931348623157e308, True, False]),
    st.integers().map(str),
    st.floats().map(repr),
    st.sampled_from([value for _, value in boundaries()]),
    st.sampled_from([
        "", " ", "1e3", " 5 ", "0x10", "1_000", "nan", "NaN", "inf", "-inf", "Infinity", "+3", "3.0",
        "\u0663", "\uff11\uff12", "\u00b2", "1e400", "-0", "0.0", "1/2", "3 4", "9" * 5000, "0" * 300 + "1",
    ]),
)

KNOWN_KEYS = tuple(settings_mod.SETTINGS)

config_keys: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(KNOWN_KEYS),
    st.sampled_from(KNOWN_KEYS).map(lambda k: k.replace("_", "-")),
    st.sampled_from(KNOWN_KEYS).map(lambda k: f"  {k.upper()}\t"),
    st.sampled_from([
        "max retries", "maxretries", "max_retries\x00", "visibility_timeout;", "retention'--", "max__retries",
        "_max_retries", "MAX-RETRIES ", "backoff base", "\u0130max_retries", "retention\u200b",
    ]),
    st.text(max_size=30),
)


#: Strings that have broken SQL layers before: injections, quotes, NULs, LIKE and glob
#: wildcards, parameter markers, direction overrides, astral characters.
NASTY = (
    "",
    " ",
    "'",
    '"',
    "''",
    "\\",
    "\x00",
    "a\x00b",
    "\x00'); DROP TABLE jobs; --",
    "'); DROP TABLE jobs; --",
    "\"); DROP TABLE config; --",
    "x' OR '1'='1",
    "1; DELETE FROM jobs",
    "%",
    "_",
    "*",
    "?",
    ":queue",
    "$1",
    "NULL",
    "null",
    "None",
    "0",
    "1",
    "-1",
    "\u202eevil",
    "\ufeff",
    "é",
    "\U0001f642",
    "\n\r\t",
    "a" * 5000,
)

nasty_text = st.one_of(
    st.sampled_from(NASTY),
    st.text(),
    st.builds(lambda a, b: a + b, st.sampled_from(NASTY), st.text(max_size=20)),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F)),
)
