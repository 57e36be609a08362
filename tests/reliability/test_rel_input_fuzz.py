"""Bad input through the store's verbs: queue names, task ids, task names and payloads of any
unicode (NULs, quotes, SQL injection attempts) round-trip exactly and leave the schema intact;
text SQLite cannot hold fails cleanly; find_job takes only ASCII decimal keys below 2**63 for
row ids; payloads over the limit in UTF-8 bytes are refused with nothing written."""

from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from queuectl_kombu import JobNotFound, JobState, NewJob
from queuectl_kombu.store import jobs as store_mod  # MAX_PAYLOAD_BYTES
from queuectl_kombu.exceptions import PayloadTooLarge

from tests.support.clock import Clock

from .helpers import COUNTS, TABLES, fresh_store, integrity, rel_settings, row_count, schema_tables
from .strategies import nasty_text

FIELDS = ("id", "task_id", "task_name", "queue", "state", "priority", "payload", "attempts")


def _fields(job: object) -> tuple[object, ...]:
    return tuple(getattr(job, f) for f in FIELDS)


@rel_settings(max_examples=150)
@given(
    queue=nasty_text,
    other=nasty_text,
    task_id=nasty_text,
    task_name=st.none() | nasty_text,
    payload=nasty_text,
    owner=nasty_text,
)
def test_strings_round_trip_and_the_schema_survives(
    queue: str, other: str, task_id: str, task_name: str | None, payload: str, owner: str
) -> None:
    assume(queue != other)
    COUNTS["input: store string round-trip cases"] += 1
    clock = Clock()
    with fresh_store(clock) as store:
        store.declare_queue(queue)
        a = store.publish(NewJob(queue, payload, priority=3, task_id=task_id, task_name=task_name))
        b = store.publish(NewJob(other, payload + "\x00", task_id=task_id + "'", task_name=task_name))
        job_a, job_b = store.get_job(a), store.get_job(b)
        assert _fields(job_a) == (a, task_id, task_name, queue, JobState.PENDING, 3, payload, 0)
        assert _fields(job_b) == (b, task_id + "'", task_name, other, JobState.PENDING, 0, payload + "\x00", 0)

        # Every reader finds exactly the row it is asked for: no wildcard, no truncation at NUL.
        assert [j.id for j in store.list_jobs(queue=queue)] == [a]
        assert [j.id for j in store.list_jobs(JobState.PENDING, queue=other)] == [b]
        assert store.find_job(task_id).id == a
        assert store.find_job(task_id + "'").id == b
        assert [j.id for j in store.jobs_for_task(task_id)] == [a]
        assert store.task_exists(task_id) and store.task_exists(task_id + "'")
        assert set(store.counts_by_queue()) == {queue, other}
        assert store.queue_size(queue) == 1 and store.queue_size(other) == 1
        assert store.has_queue(queue) and [q["name"] for q in store.list_queues()] == [queue]

        # Claimed by an owner of any name, acked by that owner only.
        (claimed,) = store.claim([queue], 5, owner, 30.0)
        assert (claimed.id, claimed.queue, claimed.task_id, claimed.payload) == (a, queue, task_id, payload)
        assert store.ack(a, owner + "x") is False
        assert store.ack(a, owner) is True
        assert store.get_job(a).state is JobState.COMPLETED
        (taken,) = store.take([other], 5)
        assert (taken.id, taken.payload) == (b, payload + "\x00")

        assert store.purge(queue) == 0
        assert store.counts()[JobState.COMPLETED] == 1 and row_count(store.path) == 1
        assert schema_tables(store.path) == TABLES
        assert integrity(store.path) == ["ok"]


def test_text_sqlite_cannot_hold_is_refused_and_nothing_written() -> None:
    """A lone surrogate cannot be encoded as UTF-8: a ValueError, and no row of the batch is kept."""
    with fresh_store() as store:

        @rel_settings(max_examples=100)
        @given(
            field=st.sampled_from(["queue", "payload", "task_id", "task_name"]),
            prefix=st.text(max_size=5),
            surrogate=st.integers(0xD800, 0xDFFF).map(chr),
            first_ok=st.booleans(),
        )
        def check(field: str, prefix: str, surrogate: str, first_ok: bool) -> None:
            COUNTS["input: unencodable text cases"] += 1
            values = {"queue": "q", "payload": "{}", "task_id": "t", "task_name": "n"}
            values[field] = prefix + surrogate
            batch = ([NewJob("q", "fine")] if first_ok else []) + [NewJob(**values)]
            with pytest.raises(ValueError):
                store.publish_many(batch)
            assert row_count(store.path) == 0

        check()
        assert schema_tables(store.path) == TABLES
        assert integrity(store.path) == ["ok"]


#: Keys that str.isdigit() or str.isdecimal() takes for numbers but that are no row id: digits
#: of other scripts, superscripts, circled and fullwidth digits, and numbers beyond SQLite's
#: 64-bit integers.
NOT_ROW_IDS = (
    "\u00b2", "\u2460", "1\u00b2", "\u0661", "\u0661\u0662", "\uff11", "\uff11\uff12", "\U0001d7cf", "\u0967",
    str(2**63), str(2**64), "9" * 30, "-1", " 1", "1 ", "+1", "1.0", "0x1", "1_0", "",
)


def _expected_row_id(key: str | int) -> int | None:
    """The row id find_job must look up: ASCII decimal digits only, below 2**63."""
    text = str(key)
    if text and all(c in "0123456789" for c in text) and int(text) < 2**63:
        return int(text)
    return None


def test_find_job_finds_the_right_row_or_raises_job_not_found() -> None:
    """find_job(key): a task id, else a row id, else JobNotFound; never another error."""
    with fresh_store() as store:
        ids = store.publish_many([NewJob("q", f"p{i}", task_id=f"t{i}") for i in range(3)])
        task_ids = {f"t{i}" for i in range(3)}

        @rel_settings(max_examples=300)
        @given(key=st.one_of(
            nasty_text, st.sampled_from(sorted(task_ids)), st.integers(-5, 10).map(str),
            st.text(alphabet="0123456789", min_size=1, max_size=25),
            st.sampled_from(NOT_ROW_IDS),
            st.integers(2**63 - 3, 2**63 + 3).map(str),
            st.text(alphabet="0123456789\u00b2\u2460\u0661\uff11\U0001d7cf", min_size=1, max_size=4),
            st.integers(-5, 10),
            st.integers(2**63 - 3, 2**64),
        ))
        def check(key: str | int) -> None:
            COUNTS["input: find_job cases"] += 1
            row_id = _expected_row_id(key)
            if key in task_ids:
                assert store.find_job(key).task_id == key
            elif row_id in ids:
                COUNTS["input: find_job by row id"] += 1
                assert store.find_job(key).id == row_id
            else:
                with pytest.raises(JobNotFound, match="^no job with id "):
                    store.find_job(key)

        check()


@pytest.mark.parametrize("key", NOT_ROW_IDS)
def test_find_job_with_a_key_that_is_no_row_id(key: str) -> None:
    with fresh_store() as store:
        store.publish(NewJob("q", "{}"))
        with pytest.raises(JobNotFound) as info:
            store.find_job(key)
        assert str(info.value) == f"no job with id {key!r}"
        assert store.find_job("1").id == store.find_job(1).id == 1


@pytest.mark.parametrize("key", [str(2**63 - 1), 2**63 - 1, "0", "2"])
def test_find_job_with_a_row_id_of_no_job(key: str | int) -> None:
    with fresh_store() as store:
        store.publish(NewJob("q", "{}"))
        with pytest.raises(JobNotFound, match=f"^no job with id {int(key)}$"):
            store.find_job(key)


def test_a_task_id_that_looks_like_a_row_id_comes_first() -> None:
    with fresh_store() as store:
        first = store.publish(NewJob("q", "a"))
        second = store.publish(NewJob("q", "b", task_id=str(first)))
        odd = store.publish(NewJob("q", "c", task_id="\u00b2"))
        assert store.find_job(str(first)).id == second
        assert store.find_job(first).id == second
        assert store.find_job("\u00b2").id == odd


LIMIT = 64


#: Characters of every UTF-8 width: 1, 2, 3 and 4 bytes.
WIDTHS = ("y", "\u00e9", "\u20ac", "\U0001f642")


def _utf8(text: str) -> int:
    return len(text.encode("utf-8"))


@st.composite
def payloads(draw: st.DrawFn) -> str:
    """A payload of a drawn size in UTF-8 bytes (0 to twice the limit): a few characters of mixed
    width, then one drawn character repeated, then "y" up to the size."""
    size = draw(st.integers(0, 2 * LIMIT))
    head = ""
    for char in draw(st.lists(st.sampled_from(WIDTHS), max_size=6)):
        if _utf8(head + char) <= size:
            head += char
    filler = draw(st.sampled_from(WIDTHS))
    body = filler * ((size - _utf8(head)) // _utf8(filler))
    text = head + body
    text += "y" * (size - _utf8(text))
    assert _utf8(text) == size
    return text


def test_oversized_payload_is_refused_and_nothing_written() -> None:
    with fresh_store() as store, mock.patch.object(store_mod, "MAX_PAYLOAD_BYTES", LIMIT):
        store.publish(NewJob("q", "x" * LIMIT))  # exactly the limit: accepted

        @rel_settings(max_examples=200)
        @given(texts=st.lists(payloads(), min_size=1, max_size=5), unique=st.booleans())
        def check(texts: list[str], unique: bool) -> None:
            COUNTS["input: payload size cases"] += 1
            before = [j.id for j in store.list_jobs()]
            tag = str(len(before))  # task ids unique to this example, for unique_task_ids
            jobs = [NewJob("q", text, task_id=f"{tag}-{i}") for i, text in enumerate(texts)]
            over = [_utf8(text) for text in texts if _utf8(text) > LIMIT]
            if over:
                COUNTS["input: payload size refused"] += 1
                message = f"^message of {over[0]} bytes for queue 'q' exceeds the limit of {LIMIT} bytes$"
                with pytest.raises(PayloadTooLarge, match=message):
                    store.publish_many(jobs, unique_task_ids=unique)
                assert [j.id for j in store.list_jobs()] == before
            else:
                ids = store.publish_many(jobs, unique_task_ids=unique)
                assert [store.get_job(i).payload for i in ids] == [j.payload for j in jobs]
                assert [j.id for j in store.list_jobs()] == before + ids

        check()
        assert integrity(store.path) == ["ok"]


@pytest.mark.parametrize(
    ("payload", "size"),
    [
        ("\u00e9" * 40, 80),  # 40 characters, 80 bytes
        ("\u00e9" * 32 + "y", 65),
        ("\u20ac" * 22, 66),
        ("\U0001f642" * 16 + "y", 65),
        ("y" * 63 + "\u00e9", 65),
    ],
    ids=["e-acute*40", "e-acute*32+y", "euro*22", "emoji*16+y", "y*63+e-acute"],
)
def test_payload_limit_counts_bytes(payload: str, size: int) -> None:
    with fresh_store() as store, mock.patch.object(store_mod, "MAX_PAYLOAD_BYTES", LIMIT):
        assert _utf8(payload) == size > LIMIT >= len(payload)
        store.publish(NewJob("q", "fine"))
        with pytest.raises(PayloadTooLarge) as info:
            store.publish_many([NewJob("q", "also fine"), NewJob("q", payload)])
        assert str(info.value) == f"message of {size} bytes for queue 'q' exceeds the limit of {LIMIT} bytes"
        assert [j.payload for j in store.list_jobs()] == ["fine"]


@pytest.mark.parametrize("payload", ["\u00e9" * 32, "\u20ac" * 21 + "y", "\U0001f642" * 16, "y" * 62 + "\u00e9"])
def test_payload_of_exactly_the_limit_in_bytes_is_accepted(payload: str) -> None:
    with fresh_store() as store, mock.patch.object(store_mod, "MAX_PAYLOAD_BYTES", LIMIT):
        assert _utf8(payload) == LIMIT
        job_id = store.publish(NewJob("q", payload))
        assert store.get_job(job_id).payload == payload
