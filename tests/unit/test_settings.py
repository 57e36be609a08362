"""Runtime settings: names, validation, defaults and the retry policy."""

from __future__ import annotations

import pytest

from queuectl_kombu import InvalidConfig, JobState, JobStore
from queuectl_kombu.retry import RetryPolicy
from queuectl_kombu.settings import DEFAULTS, parse


def test_defaults() -> None:
    assert DEFAULTS == {"max_retries": 3, "backoff_base": 2.0, "visibility_timeout": 30.0, "retention": 86400.0}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_retries", "-1", "max_retries must be at least 0, not '-1'"),
        ("max-retries", "three", "max_retries must be a whole number, not 'three'"),
        ("max_retries", 1.5, "max_retries must be a whole number, not 1.5"),
        ("backoff_base", "0.5", "backoff_base must be at least 1, not '0.5'"),
        ("visibility_timeout", "0", "visibility_timeout must be greater than 0, not '0'"),
        ("retention", "nan", "retention must be a finite number, not 'nan'"),
        ("retention", True, "retention must be a number, not True"),
        ("colour", "1", "unknown config key 'colour' (known: backoff-base, max-retries, retention, visibility-timeout)"),
    ],
)
def test_bad_values_are_refused(key: str, value: object, message: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        parse(key, value)
    assert str(info.value) == message


def test_bad_value_writes_nothing(store: JobStore) -> None:
    with pytest.raises(InvalidConfig):
        store.set_config("max_retries", "-3")
    assert store.db.connection().execute("SELECT COUNT(*) FROM config").fetchone()[0] == 0


def test_set_and_read_back(store: JobStore) -> None:
    assert store.set_config("backoff-base", "1.5") == ("backoff_base", 1.5)
    assert store.settings(fresh=True)["backoff_base"] == 1.5


def test_retry_policy_decisions() -> None:
    policy = RetryPolicy(max_retries=2, backoff_base=2)
    assert policy.decide(1, 100.0).next_run_at == 102.0
    assert policy.decide(2, 100.0).next_run_at == 104.0
    assert policy.decide(3, 100.0).state is JobState.DEAD
    assert policy.decide(1, 100.0, max_retries=0).state is JobState.DEAD
