"""Bad configuration everywhere: settings.parse, JobStore.set_config and the config table.

Only InvalidConfig may come out of a bad key or value (an overflowing or infinite one, and one
beyond the setting's maximum, included), with a message naming the setting; a refused value
writes nothing, an accepted value reads back as it was stored, and a bad row in the table keeps
the default. Every case is checked against strategies.expected_setting, an oracle written from
the documented bounds. The largest valid settings no longer break the verbs that use them: the
backoff is capped at a year, and lease recovery and reject work at every valid max_retries.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queuectl_kombu import InvalidConfig, JobState, NewJob
from queuectl_kombu import settings as settings_mod
from queuectl_kombu.retry import RetryPolicy

from tests.support.clock import Clock

from .helpers import COUNTS, config_rows, fresh_store, integrity, raw, rel_settings
from .strategies import LIMITS, boundaries, config_keys, config_values, expected_setting

#: The longest backoff, as documented: a year.
YEAR = 365 * 86400.0


def _check_refusal(exc: InvalidConfig, key: str, value: Any) -> None:
    """The message is the one the oracle expects: it names the setting and the value refused."""
    expected = expected_setting(key, value)
    message = str(exc)
    assert expected.refused, f"{key!r} = {value!r} was refused ({message}) but is valid"
    assert message.startswith(expected.refused), f"{message!r} does not start with one of {expected.refused}"
    if expected.name is not None:
        assert message.endswith(f", not {value!r}"), message


def _check_accepted(key: str, value: Any, name: str, typed: Any) -> None:
    expected = expected_setting(key, value)
    assert not expected.refused, f"{key!r} = {value!r} was accepted as {typed!r}; expected {expected.refused}"
    assert name == expected.name
    kind, low, _, high = LIMITS[name]
    assert type(typed) is kind and typed == expected.value
    assert kind is int or math.isfinite(typed)
    assert low <= typed <= high
    # What is stored is read back unchanged (set_config stores json.dumps(typed)).
    assert settings_mod.parse(name, typed) == (name, typed)
    assert settings_mod.from_rows({name: json.dumps(typed)})[name] == typed


def _check_parse(key: str, value: Any) -> bool:
    """settings.parse(key, value) either refuses with InvalidConfig or accepts, each checked;
    True when it refused."""
    try:
        name, typed = settings_mod.parse(key, value)
    except InvalidConfig as exc:
        _check_refusal(exc, key, value)
        return True
    _check_accepted(key, value, name, typed)
    return False


@rel_settings(max_examples=600)
@given(key=config_keys, value=config_values)
def test_parse_raises_only_invalid_config(key: str, value: Any) -> None:
    COUNTS["config: settings.parse cases"] += 1
    if _check_parse(key, value):
        COUNTS["config: settings.parse refused"] += 1


@pytest.mark.parametrize(("key", "value"), boundaries(), ids=lambda v: repr(v)[:24])
def test_parse_on_and_beside_every_bound(key: str, value: Any) -> None:
    COUNTS["config: bound cases"] += 1
    _check_parse(key, value)


def test_set_config_refuses_bad_input_and_writes_nothing() -> None:
    with fresh_store() as store:

        @rel_settings(max_examples=300)
        @given(key=config_keys, value=config_values)
        def check(key: str, value: Any) -> None:
            COUNTS["config: JobStore.set_config cases"] += 1
            before = config_rows(store.path)
            try:
                name, typed = store.set_config(key, value)
            except InvalidConfig as exc:
                _check_refusal(exc, key, value)
                assert config_rows(store.path) == before
                COUNTS["config: JobStore.set_config refused"] += 1
                return
            after = config_rows(store.path)
            assert after == {**before, name: json.dumps(typed)}
            assert store.settings(fresh=True)[name] == typed
            _check_accepted(key, value, name, typed)

        check()
        assert integrity(store.path) == ["ok"]


def _row_value(raw_value: str) -> Any:
    """What a config row holds, as from_rows() reads it; ValueError for a row that is no JSON."""
    return json.loads(raw_value)


@rel_settings(max_examples=300)
@given(
    rows=st.dictionaries(
        st.one_of(st.sampled_from(tuple(settings_mod.SETTINGS)), st.text(max_size=10)),
        st.one_of(
            st.text(),
            config_values.map(lambda v: json.dumps(v) if not isinstance(v, int) or abs(v) < 10**300 else str(v)),
        ),
        max_size=6,
    )
)
def test_bad_config_rows_keep_the_default(rows: dict[str, str]) -> None:
    """from_rows(): defaults overlaid with the table's valid values (bad rows, overflowing ones
    and ones beyond the maximum included, keep the default)."""
    COUNTS["config: config-table rows cases"] += 1
    merged = settings_mod.from_rows(rows)
    assert set(merged) == set(settings_mod.SETTINGS)
    for name, value in merged.items():
        expected = settings_mod.DEFAULTS[name]
        if name in rows:
            try:
                oracle = expected_setting(name, _row_value(rows[name]))
            except ValueError:
                pass
            else:
                if not oracle.refused:
                    expected = oracle.value
        assert value == expected and type(value) is type(expected), (name, rows[name], value)


# -- overflowing values and values beyond the maximum (bugs fixed in settings.py) -----------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("backoff_base", 10**400, "backoff_base must be a number, not " + "1" + "0" * 400),
        ("visibility_timeout", 10**400, "visibility_timeout must be a number, not " + "1" + "0" * 400),
        ("retention", -(10**400), "retention must be a number, not -1" + "0" * 400),
        ("max_retries", float("inf"), "max_retries must be a finite number, not inf"),
        ("max_retries", float("-inf"), "max_retries must be a finite number, not -inf"),
        ("backoff_base", "1e400", "backoff_base must be a finite number, not '1e400'"),
        ("retention", float("inf"), "retention must be a finite number, not inf"),
        ("max_retries", 2**63, "max_retries must be at most 10000, not 9223372036854775808"),
        ("max_retries", 10_001, "max_retries must be at most 10000, not 10001"),
        ("max-retries", "10001", "max_retries must be at most 10000, not '10001'"),
        ("backoff_base", 1e200, "backoff_base must be at most 3600, not 1e+200"),
        ("visibility_timeout", 7 * 86400 + 0.5, "visibility_timeout must be at most 604800, not 604800.5"),
        ("retention", 10 * 365 * 86400 + 1, "retention must be at most 3.1536e+08, not 315360001"),
    ],
    ids=[
        "backoff_base=10**400", "visibility_timeout=10**400", "retention=-10**400", "max_retries=inf",
        "max_retries=-inf", "backoff_base='1e400'", "retention=inf", "max_retries=2**63", "max_retries=10001",
        "max-retries='10001'", "backoff_base=1e200", "visibility_timeout=7d+0.5", "retention=10y+1",
    ],
)
def test_overflowing_or_too_large_value_raises_invalid_config(key: str, value: Any, message: str) -> None:
    with fresh_store() as store:
        before = config_rows(store.path)
        with pytest.raises(InvalidConfig) as info:
            store.set_config(key, value)
        assert str(info.value) == message
        assert config_rows(store.path) == before
        assert store.settings(fresh=True) == settings_mod.DEFAULTS


@pytest.mark.parametrize(("name", "maximum"), [(name, limits[3]) for name, limits in LIMITS.items()])
def test_the_maximum_itself_is_accepted(name: str, maximum: float) -> None:
    with fresh_store() as store:
        assert store.set_config(name, maximum) == (name, maximum)
        assert store.settings(fresh=True)[name] == maximum


@pytest.mark.parametrize(
    ("key", "row"),
    [
        ("backoff_base", "1" + "0" * 400),
        ("backoff_base", "-1" + "0" * 400),
        ("visibility_timeout", "1e400"),
        ("retention", "-1e400"),
        ("retention", "NaN"),
        ("max_retries", "Infinity"),
        ("max_retries", "9223372036854775808"),
        ("max_retries", "10001"),
        ("backoff_base", "3601"),
        ("visibility_timeout", "604801"),
        ("retention", "315360001"),
    ],
    ids=lambda v: v if len(v) < 24 else f"{v[:4]}...({len(v)} chars)",
)
def test_overflowing_or_too_large_row_keeps_the_default(key: str, row: str) -> None:
    """A row written by hand or by another tool: settings() falls back to the default."""
    assert settings_mod.from_rows({key: row})[key] == settings_mod.DEFAULTS[key]
    with fresh_store() as store:
        with contextlib.closing(raw(store.path)) as conn:
            conn.execute("INSERT INTO config (key, value) VALUES (?, ?)", (key, row))
        assert store.settings(fresh=True) == settings_mod.DEFAULTS


def test_max_retries_cannot_break_lease_recovery() -> None:
    """2**63 (beyond SQLite's integers) is refused, also as a row written by hand; at the maximum,
    10000, an expired lease is recovered and the job is not left processing."""
    clock = Clock()
    with fresh_store(clock) as store:
        with pytest.raises(InvalidConfig, match=r"^max_retries must be at most 10000, not 9223372036854775808$"):
            store.set_config("max_retries", 2**63)
        assert config_rows(store.path) == {}
        with contextlib.closing(raw(store.path)) as conn:
            conn.execute("INSERT INTO config (key, value) VALUES ('max_retries', ?)", (str(2**63),))
        assert store.settings(fresh=True)["max_retries"] == settings_mod.DEFAULTS["max_retries"]

        job_id = store.publish(NewJob("q", "{}"))
        for attempt, max_retries in enumerate([None, 10_000], start=1):
            if max_retries is not None:
                store.set_config("max_retries", max_retries)
            (claimed,) = store.claim(["q"], 1, "dead-worker", 30.0)
            assert (claimed.id, claimed.attempts) == (job_id, attempt)
            clock.advance(31.0)
            assert [(r[0], r[2]) for r in store.recover_expired_leases()] == [(job_id, JobState.PENDING)]
            assert store.get_job(job_id).state is JobState.PENDING
        assert store.list_jobs(JobState.PROCESSING) == []


def _backoff(base: float, attempts: int) -> float:
    """The documented backoff: base ** attempts seconds, at most a year."""
    if attempts * math.log(base) > math.log(YEAR) + 1e-9:
        return YEAR
    return min(base**attempts, YEAR)


def test_largest_backoff_base_does_not_break_reject() -> None:
    """1e200 is refused; at the maximum, 3600, every reject schedules the retry at most a year
    ahead (3600 ** 87 would overflow a float) until the job is dead: it is never left processing."""
    clock = Clock()
    with fresh_store(clock) as store:
        with pytest.raises(InvalidConfig, match=r"^backoff_base must be at most 3600, not 1e\+200$"):
            store.set_config("backoff_base", 1e200)
        store.set_config("backoff_base", 3600)
        store.set_config("max_retries", 100)
        job_id = store.publish(NewJob("q", "{}"))
        for attempts in range(1, 102):
            (claimed,) = store.claim(["q"], 1, "w", 30.0)
            assert (claimed.id, claimed.attempts) == (job_id, attempts)
            state = store.fail(job_id, "w", "boom")
            job = store.get_job(job_id)
            assert job.state is state
            if attempts <= 100:
                assert state is JobState.FAILED
                assert job.next_run_at - clock.now == _backoff(3600.0, attempts), attempts
                clock.now = job.next_run_at
            else:
                assert state is JobState.DEAD
        assert store.list_jobs(JobState.PROCESSING) == []

        # A backoff_base given by the transport's options is not a setting: capped all the same.
        store.dlq_retry(job_id)
        for attempts in (1, 2, 3):  # 1e300 ** 2 overflows a float
            (claimed,) = store.claim(["q"], 1, "w", 30.0)
            assert claimed.attempts == attempts
            assert store.fail(job_id, "w", "boom", max_retries=10_000, backoff_base=1e300) is JobState.FAILED
            assert store.get_job(job_id).next_run_at - clock.now == YEAR
            clock.now = store.get_job(job_id).next_run_at


@rel_settings(max_examples=300)
@given(
    base=st.one_of(
        st.floats(min_value=1.0, max_value=3600.0),
        st.floats(min_value=1.0),  # transport options are not settings: any base >= 1, infinity too
        st.sampled_from([1.0, 2.0, 3600.0, 1e300, float("inf")]),
    ),
    max_retries=st.integers(0, 10_000),
    attempts=st.integers(1, 10_001),
)
def test_retry_decision_never_raises(base: float, max_retries: int, attempts: int) -> None:
    """RetryPolicy.decide(): FAILED with the retry at most a year ahead while attempts <=
    max_retries, DEAD after; never an error."""
    COUNTS["config: RetryPolicy.decide cases"] += 1
    now = 1_700_000_000.0
    policy = RetryPolicy(max_retries=max_retries, backoff_base=base)
    decision = policy.decide(attempts, now)
    if attempts <= max_retries:
        assert decision.state is JobState.FAILED
        assert decision.next_run_at == now + _backoff(base, attempts)
        assert now < decision.next_run_at <= now + YEAR
        assert policy.delay(attempts) <= policy.delay(attempts + 1) <= YEAR
    else:
        assert (decision.state, decision.next_run_at) == (JobState.DEAD, None)
