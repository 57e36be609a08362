"""Bad input through kombu: Producer.publish on kombu.Connection("sqlite:///<file>") with
arbitrary JSON headers, priorities, eta and expiration values.

Publishing either succeeds, and the message is then consumed exactly as sent when it is due
and not expired, or raises the error the headers call for, and then no row was written: a
ValueError naming the header when `id`, `task` or (used for the task id) `correlation_id` is
no string or number, or `x-max-retries` is no whole number from 0 to 10000; DuplicateJob for
an x-unique-id message whose task id exists. An `eta` that is unreadable, overflows or is not
finite is ignored with a warning: the message is due at once. The transport runs on the real
clock: every eta and expiration is drawn far enough from now that the test cannot race it,
except an expiration of 0 or less, which has passed when the publish returns: the connection's
housekeeper (running from the first basic_get on) may delete such a message before the test
reads its row, and the test accepts either.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from unittest import mock

import kombu
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu.exceptions import KombuError

import queuectl_kombu  # noqa: F401  (registers sqlite://)
from queuectl_kombu import InvalidValue, JobState, JobStore, QueuectlError
from queuectl_kombu.store import jobs as store_mod  # MAX_PAYLOAD_BYTES
from queuectl_kombu.exceptions import DuplicateJob, PayloadTooLarge

from .helpers import COUNTS, TABLES, integrity, rel_settings, schema_tables, scratch_path
from .strategies import nasty_text, strict_json

CLEAR_ERRORS = (QueuectlError, KombuError, ValueError, TypeError)
#: What the transport logs for an eta it ignores.
ETA_IGNORED = "ignoring unreadable eta header"
#: How far from now a drawn eta or expiration stays, so that the real clock cannot overtake it.
MARGIN = 3600.0

_serial = itertools.count()
#: Now, fixed once: strategies must draw alike every time hypothesis replays them.
NOW = time.time()


# -- strategies -------------------------------------------------------------------------------------

offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


def _iso(instant: float, tz: timezone | None, sep: str) -> str:
    when = datetime.fromtimestamp(instant, timezone.utc)
    if tz is None:
        return when.replace(tzinfo=None).isoformat(sep=sep)  # naive: read as UTC
    return when.astimezone(tz).isoformat(sep=sep)


def _unreadable(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return True
    return False


#: Numbers that no float holds or that are not finite: ignored as an eta.
NON_FINITE = (10**400, -(10**400), 2**1024, float("nan"), float("inf"), float("-inf"))


@st.composite
def etas(draw: st.DrawFn) -> tuple[Any, str, bool]:
    """(eta header value, "due" or "future", whether the transport ignores it with a warning)."""
    now = NOW
    kind = draw(st.sampled_from([
        "absent", "past", "future", "past number", "future number", "unreadable", "non-finite", "falsy",
    ]))
    if kind == "absent":
        return None, "due", False
    if kind in ("past", "future"):
        instant = (
            draw(st.floats(-62_000_000_000.0, now - MARGIN)) if kind == "past"
            else draw(st.floats(now + 2 * MARGIN, 253_000_000_000.0))
        )
        tz = draw(st.none() | offsets)
        return _iso(instant, tz, draw(st.sampled_from(["T", " "]))), "due" if kind == "past" else "future", False
    if kind == "past number":
        past = st.one_of(
            st.floats(-1e12, now - MARGIN), st.integers(-(10**12), int(now - MARGIN)), st.just(True),
            st.sampled_from([-1e308, -(10**300)]),
        )
        return draw(past), "due", False
    if kind == "future number":
        future = st.one_of(
            st.floats(now + 2 * MARGIN, 1e15), st.integers(int(now + 2 * MARGIN), 10**15),
            st.sampled_from([1e308, 10**300]),
        )
        return draw(future), "future", False
    if kind == "unreadable":  # logged and ignored: the message is due at once
        return draw(st.one_of(
            st.text(min_size=1).filter(_unreadable),
            st.lists(strict_json, min_size=1, max_size=2),
            st.dictionaries(st.text(max_size=3), strict_json, min_size=1, max_size=2),
        )), "due", True
    if kind == "non-finite":  # overflows a float or is not finite: logged and ignored
        return draw(st.sampled_from(NON_FINITE)), "due", True
    return draw(st.sampled_from(["", 0, 0.0, False, [], {}])), "due", False


max_retries_values = st.one_of(
    st.integers(-10, 10**6),
    st.floats(-10.0, 1e6),
    st.booleans(),
    st.sampled_from([
        "3", " 4 ", "x", "", "1.5", "0x10", "-2", "\u0663", "+3", "007", "10000", "10001", "1e3", "3\n",
        0, 10_000, 10_001, 10_000.0, -0.0, 2**63, 10**30, 10**400, 1e300, float("inf"), float("nan"),
        None, [3], {"n": 3},
    ]),
)

#: `id`, `task` and `correlation_id`: strings and numbers are kept as text; anything else
#: (booleans, lists, dicts) is refused.
text_header_values = st.one_of(
    nasty_text,
    st.integers(-(2**63), 2**63 - 1),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(strict_json, max_size=2),
    st.dictionaries(st.text(max_size=3), strict_json, max_size=2),
)


class Refused(Exception):
    """What the oracle expects instead of a row: the header a ValueError must name."""

    def __init__(self, header: str) -> None:
        super().__init__(header)
        self.header = header


def expected_text(name: str, value: Any) -> str | None:
    """A header naming something, as the task id or name the row must carry."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise Refused(name)


def expected_max_retries(value: Any) -> int | None:
    """x-max-retries: a whole number from 0 to 10000, as a number or its decimal string."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise Refused("x-max-retries")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*(0|[1-9][0-9]*)\s*", value):
        number = int(value)
    else:
        raise Refused("x-max-retries")
    if not 0 <= number <= 10_000:
        raise Refused("x-max-retries")
    return number


def expected_row(headers: dict[str, Any], correlation_id: Any) -> dict[str, Any]:
    """The task id, task name and max_retries of the row, or Refused (in the order the transport
    reads the headers: the task id first, from `correlation_id` only when `id` gives none)."""
    task_id = expected_text("id", headers.get("id")) or expected_text("correlation_id", correlation_id)
    return {
        "task_id": task_id,
        "task_name": expected_text("task", headers.get("task")),
        "max_retries": expected_max_retries(headers.get("x-max-retries")),
    }


@st.composite
def headers_strategy(draw: st.DrawFn) -> tuple[dict[str, Any], str, bool]:
    headers = draw(st.dictionaries(st.text(max_size=12), strict_json, max_size=4))
    eta, due, ignored = draw(etas())
    headers.pop("eta", None)
    if eta is not None:
        headers["eta"] = eta
    for key, values in (
        ("id", text_header_values),
        ("task", text_header_values),
        ("x-max-retries", max_retries_values),
        ("x-unique-id", st.booleans()),
    ):
        headers.pop(key, None)
        if draw(st.booleans()):
            headers[key] = draw(values)
    return headers, due, ignored


priorities = st.one_of(
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
expirations = st.one_of(
    st.none(),
    st.floats(-1e6, 0.0),
    st.floats(MARGIN, 1e9),
    st.integers(int(MARGIN), 10**12),
)


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def broker() -> Iterator[tuple[kombu.Connection, JobStore, str]]:
    """A kombu connection on a new file, and a JobStore of our own on the same file for checks."""
    directory = scratch_path()
    path = os.path.join(directory, "queue.db")
    conn = kombu.Connection("sqlite:///" + path)
    conn.connect()
    checker = JobStore(path)
    try:
        yield conn, checker, path
        assert integrity(path) == ["ok"]
        assert schema_tables(path) == TABLES
    finally:
        conn.release()
        checker.close()
        shutil.rmtree(directory, ignore_errors=True)


def _rows(checker: JobStore, queue: str) -> list[Any]:
    return checker.list_jobs(queue=queue)


# -- the fuzz test -------------------------------------------------------------------------------


def _same_headers(got: dict[str, Any], sent: dict[str, Any]) -> bool:
    """Equal, a NaN eta matching a NaN eta."""
    eta = sent.get("eta")
    if isinstance(eta, float) and math.isnan(eta):
        got, sent = dict(got), dict(sent)
        got_eta = got.pop("eta", None)
        sent.pop("eta")
        return isinstance(got_eta, float) and math.isnan(got_eta) and got == sent
    return got == sent


def test_publish_then_consume_or_a_clear_error(
    broker: tuple[kombu.Connection, JobStore, str], caplog: pytest.LogCaptureFixture
) -> None:
    conn, checker, _ = broker
    channel = conn.channel()
    producer = kombu.Producer(channel, serializer="json")
    caplog.set_level(logging.WARNING, logger="queuectl_kombu.publishing")

    @rel_settings(max_examples=200)
    @given(
        body=strict_json,
        drawn=headers_strategy(),
        correlation_id=st.none() | text_header_values,
        priority=priorities,
        expiration=expirations,
    )
    def check(
        body: Any, drawn: tuple[dict[str, Any], str, bool], correlation_id: Any, priority: Any,
        expiration: float | None,
    ) -> None:
        headers, due, eta_ignored = drawn
        COUNTS["kombu: publish cases"] += 1
        queue = f"fuzz-{next(_serial)}"
        kwargs: dict[str, Any] = {"routing_key": queue, "headers": dict(headers), "expiration": expiration}
        if priority is not None:
            kwargs["priority"] = priority
        if correlation_id is not None:
            kwargs["correlation_id"] = correlation_id
        try:
            expected: dict[str, Any] | None = expected_row(headers, correlation_id)
            refused_for = None
        except Refused as refusal:
            expected, refused_for = None, refusal.header
        duplicate = (
            expected is not None and bool(headers.get("x-unique-id")) and expected["task_id"] is not None
            and checker.task_exists(expected["task_id"])
        )
        caplog.clear()
        started = time.time()
        try:
            producer.publish(body, **kwargs)
        except CLEAR_ERRORS as exc:
            COUNTS[f"kombu: publish refused ({type(exc).__name__})"] += 1
            assert _rows(checker, queue) == [], "a refused message left a row"
            if refused_for is not None:
                COUNTS[f"kombu: publish refused for header {refused_for}"] += 1
                assert type(exc) is InvalidValue, exc  # our own type (a ValueError too)
                assert str(exc).startswith(f"message header {refused_for!r} must be "), exc
            else:
                assert duplicate and isinstance(exc, DuplicateJob), f"refused for no reason: {exc!r}"
            return
        finished = time.time()
        sent = {**headers, "correlation_id": correlation_id}
        assert refused_for is None, f"header {refused_for!r} = {sent[refused_for]!r} was accepted"
        assert not duplicate, "a duplicate task id was accepted with x-unique-id"
        assert expected is not None

        warned = any(ETA_IGNORED in r.getMessage() for r in caplog.records)
        assert warned == eta_ignored, (headers.get("eta"), [r.getMessage() for r in caplog.records])
        if eta_ignored:
            COUNTS["kombu: published with an ignored eta"] += 1

        rows = _rows(checker, queue)
        if not rows and expiration is not None and expiration <= 0 and not headers.get("task"):
            # Expired as it was published (a Celery task's expiration is left to the worker):
            # the housekeeper this process runs since its first basic_get deletes expired
            # messages every second, and may have done so already. Never delivered either way.
            COUNTS["kombu: published expired, deleted by the housekeeper"] += 1
            assert channel.basic_get(queue) is None
            return
        (row,) = rows
        assert row.state is JobState.PENDING and 0 <= row.priority <= 9
        assert (row.task_id, row.task_name, row.max_retries) == (
            expected["task_id"], expected["task_name"], expected["max_retries"],
        )
        if due == "future":
            assert row.next_run_at > finished
        else:
            assert row.next_run_at <= finished
        if row.expires_at is not None:  # a message's expiration (ignored for Celery tasks)
            assert expiration is not None
            assert started + expiration - 1 <= row.expires_at <= finished + expiration + 1
        expired = row.expires_at is not None and row.expires_at <= time.time()

        message = channel.basic_get(queue)
        if due == "future" or expired:
            COUNTS["kombu: published, not yet due or expired"] += 1
            assert message is None
            checker.expire()
            checker.purge(queue)
            assert _rows(checker, queue) == []
            return
        COUNTS["kombu: published and consumed"] += 1
        assert message is not None
        assert message.decode() == body
        assert _same_headers(message.headers, headers)
        message.ack()
        assert [(r.id, r.state) for r in _rows(checker, queue)] == [(row.id, JobState.COMPLETED)]
        assert channel.basic_get(queue) is None

    check()


# -- limits and atomicity through the transport --------------------------------------------------


def _fanout(conn: kombu.Connection, name: str, queues: list[str]) -> kombu.Exchange:
    exchange = kombu.Exchange(name, type="fanout")
    for queue in queues:
        kombu.Queue(queue, exchange).bind(conn.default_channel).declare()
    return exchange


@pytest.mark.parametrize(
    ("headers", "body", "error", "match"),
    [
        ({"x-max-retries": "many"}, "small", ValueError, "^message header 'x-max-retries' must be a whole number"),
        ({"x-max-retries": [3]}, "small", ValueError, "^message header 'x-max-retries' must be a whole number"),
        ({"x-max-retries": 10_001}, "small", ValueError, "^message header 'x-max-retries' must be a whole number"),
        ({"id": {"a": 1}}, "small", ValueError, "^message header 'id' must be a string, not dict$"),
        ({"task": ["t"]}, "small", ValueError, "^message header 'task' must be a string, not list$"),
        ({}, "x" * 5000, PayloadTooLarge, "exceeds the limit of 4096 bytes"),
    ],
    ids=["bad-max-retries", "max-retries-list", "max-retries-too-large", "id-dict", "task-list", "oversized"],
)
def test_fanout_publish_is_all_or_nothing(
    broker: tuple[kombu.Connection, JobStore, str], headers: dict[str, Any], body: str, error: type[Exception],
    match: str,
) -> None:
    conn, checker, _ = broker
    queues = ["fan-1", "fan-2", "fan-3"]
    exchange = _fanout(conn, "fan", queues)
    producer = kombu.Producer(conn.default_channel, exchange=exchange, serializer="json")
    with mock.patch.object(store_mod, "MAX_PAYLOAD_BYTES", 4096):
        producer.publish("fine", headers={"n": 1})
        with pytest.raises(error, match=match):
            producer.publish(body, headers=headers)
    assert [len(_rows(checker, q)) for q in queues] == [1, 1, 1]
    assert checker.counts()[JobState.PENDING] == 3


def test_oversized_message_through_kombu(broker: tuple[kombu.Connection, JobStore, str]) -> None:
    conn, checker, _ = broker
    with mock.patch.object(store_mod, "MAX_PAYLOAD_BYTES", 4096):
        q = conn.SimpleQueue("big")
        q.put("x" * 1000)
        with pytest.raises(PayloadTooLarge, match="exceeds the limit of 4096 bytes"):
            q.put("x" * 4096)
        assert [len(j.payload) <= 4096 for j in checker.list_jobs()] == [True]
        assert q.get(block=False).payload == "x" * 1000
        q.close()


# -- header values the transport used to pass to SQLite unchecked (bugs fixed in transport.py) ---

MAX_RETRIES_REFUSED = "message header 'x-max-retries' must be a whole number from 0 to 10000, not "


@pytest.mark.parametrize(
    ("headers", "properties", "message"),
    [
        ({"id": {"a": 1}}, {}, "message header 'id' must be a string, not dict"),
        ({"id": ["a"]}, {}, "message header 'id' must be a string, not list"),
        ({"id": True}, {}, "message header 'id' must be a string, not bool"),
        ({"task": ["t"]}, {}, "message header 'task' must be a string, not list"),
        ({"task": {"t": 1}}, {}, "message header 'task' must be a string, not dict"),
        ({}, {"correlation_id": {"a": 1}}, "message header 'correlation_id' must be a string, not dict"),
        ({"id": ""}, {"correlation_id": ["a"]}, "message header 'correlation_id' must be a string, not list"),
        ({"x-max-retries": 10**30}, {}, MAX_RETRIES_REFUSED + str(10**30)),
        ({"x-max-retries": 10_001}, {}, MAX_RETRIES_REFUSED + "10001"),
        ({"x-max-retries": -1}, {}, MAX_RETRIES_REFUSED + "-1"),
        ({"x-max-retries": 2.5}, {}, MAX_RETRIES_REFUSED + "2.5"),
        ({"x-max-retries": float("inf")}, {}, MAX_RETRIES_REFUSED + "inf"),
        ({"x-max-retries": True}, {}, MAX_RETRIES_REFUSED + "True"),
    ],
    ids=[
        "id-dict", "id-list", "id-bool", "task-list", "task-dict", "correlation-id-dict",
        "empty-id-correlation-id-list",
        "max-retries-huge", "max-retries-10001", "max-retries-negative", "max-retries-fraction", "max-retries-inf",
        "max-retries-bool",
    ],
)
def test_unusable_header_is_refused_and_nothing_written(
    broker: tuple[kombu.Connection, JobStore, str], headers: dict[str, Any], properties: dict[str, Any], message: str
) -> None:
    conn, checker, _ = broker
    producer = kombu.Producer(conn.default_channel, serializer="json")
    with pytest.raises(ValueError) as info:
        producer.publish({"n": 1}, routing_key="bad", headers=headers, **properties)
    assert str(info.value) == message
    assert checker.list_jobs(queue="bad") == []
    # The channel is not left broken: the next message goes through.
    producer.publish({"n": 2}, routing_key="bad")
    got = conn.default_channel.basic_get("bad")
    assert got is not None and got.decode() == {"n": 2}
    got.ack()
    assert [j.state for j in checker.list_jobs(queue="bad")] == [JobState.COMPLETED]


@pytest.mark.parametrize(
    ("headers", "properties", "task_id", "task_name", "max_retries"),
    [
        ({"id": 42, "task": 7}, {}, "42", "7", None),
        ({"id": 1.5}, {}, "1.5", None, None),
        ({}, {"correlation_id": 99}, "99", None, None),
        ({"id": "x"}, {"correlation_id": 5}, "x", None, None),
        ({"x-max-retries": 0}, {}, None, None, 0),
        ({"x-max-retries": 10_000}, {}, None, None, 10_000),
        ({"x-max-retries": 10_000.0}, {}, None, None, 10_000),
        ({"x-max-retries": " 7 "}, {}, None, None, 7),
    ],
    ids=["id-int-task-int", "id-float", "correlation-id-int", "id-wins", "max-retries-0", "max-retries-10000",
         "max-retries-10000.0", "max-retries-string"],
)
def test_numbers_in_headers_are_kept(
    broker: tuple[kombu.Connection, JobStore, str], headers: dict[str, Any], properties: dict[str, Any],
    task_id: str | None, task_name: str | None, max_retries: int | None,
) -> None:
    """Numbers in `id`, `task` and `correlation_id` become text; x-max-retries is kept as a number."""
    conn, checker, _ = broker
    producer = kombu.Producer(conn.default_channel, serializer="json")
    producer.publish({"n": 1}, routing_key="ok", headers=headers, **properties)
    (row,) = checker.list_jobs(queue="ok")
    assert (row.task_id, row.task_name, row.max_retries) == (task_id, task_name, max_retries)
    got = conn.default_channel.basic_get("ok")
    assert got is not None and got.headers == headers
    got.ack()


@pytest.mark.parametrize(
    "eta", [*NON_FINITE, "9999-99-99", "not a date"],
    ids=["10**400", "-10**400", "2**1024", "nan", "inf", "-inf", "bad-date", "text"],
)
def test_unusable_eta_is_ignored_with_a_warning(
    broker: tuple[kombu.Connection, JobStore, str], caplog: pytest.LogCaptureFixture, eta: Any
) -> None:
    """An eta that overflows, is not finite or is no date: logged, and the message is due at once."""
    conn, checker, _ = broker
    producer = kombu.Producer(conn.default_channel, serializer="json")
    caplog.set_level(logging.WARNING, logger="queuectl_kombu.publishing")
    producer.publish({"n": 1}, routing_key="eta", headers={"eta": eta})
    assert any(r.getMessage() == f"{ETA_IGNORED} {eta!r}" for r in caplog.records), caplog.records
    (row,) = checker.list_jobs(queue="eta")
    assert row.state is JobState.PENDING and row.next_run_at <= time.time()
    message = conn.default_channel.basic_get("eta")
    assert message is not None and message.decode() == {"n": 1}
    message.ack()
    assert [j.state for j in checker.list_jobs(queue="eta")] == [JobState.COMPLETED]
