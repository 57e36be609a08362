"""JobStore against an in-memory model: random sequences of every verb, checked after each step.

The model is written from the documented semantics (README "How the broker works", the state
comments of sql/schema.sql, the store's docstrings) with the boundaries the store's SQL uses:
a row is due when next_run_at <= now, its lease has expired when lease_expires_at < now, its
message TTL has run out when expires_at <= now.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from queuectl_kombu import InvalidConfig, InvalidTransition, JobNotFound, JobState, JobStore, NewJob

from tests.support.clock import Clock

from .helpers import COUNTS, TABLES, config_rows, integrity, rel_settings, schema_tables, scratch_path

OWNERS = ("w1", "w2", "w3")
#: Queue "b" is declared with x-max-priority 5 and x-message-ttl 120 s; queue "a" is not declared.
QUEUES = ("a", "b")
B_MAX_PRIORITY = 5
B_TTL = 120.0
QUEUE_LISTS = (("a",), ("b",), ("a", "b"), ("b", "a"), ("a", "a"))
WAITING = ("pending", "failed")

specs = st.tuples(
    st.sampled_from(QUEUES),
    st.integers(-2, 12),  # priority, capped at 9 (5 in "b"); not raised from below
    st.sampled_from([None, None, None, -5.0, 0.0, 3.0, 40.0]),  # eta, relative to now
    st.sampled_from([None, None, None, 0, 0, 1, 2]),  # the job's own max_retries (x-max-retries)
    st.sampled_from([None, None, None, None, 1.0, 20.0, 200.0]),  # the message's own TTL
)

#: The longest backoff (the retry policy caps backoff_base ** attempts at a year).
MAX_DELAY = 365 * 86400.0

#: Valid settings, spelled as the CLI and the API may spell them: realistic ones, and each
#: setting's maximum (test_rel_config_fuzz.py checks the bounds themselves).
good_config = st.one_of(
    st.tuples(
        st.sampled_from(["max_retries", "max-retries", " MAX_RETRIES "]), st.sampled_from([0, 1, 2, 3, 4, 10_000])
    ),
    st.tuples(st.just("backoff_base"), st.sampled_from([1, 1.0, 1.5, 2.0, 3.0, 10.0, "2.5", 3600])),
    st.tuples(
        st.sampled_from(["visibility_timeout", "visibility-timeout"]),
        st.sampled_from([0.5, 1.0, 5.0, 30.0, "7", 7 * 86400]),
    ),
    st.tuples(st.just("retention"), st.sampled_from([0, 0.0, 10.0, 86400.0, 10 * 365 * 86400])),
)
_BAD = [
    ("max_retries", -1), ("max_retries", 1.5), ("max_retries", "x"), ("max_retries", True),
    ("max_retries", 10_001), ("max_retries", float("inf")), ("backoff_base", 0.5), ("backoff_base", float("nan")),
    ("backoff_base", 3601), ("backoff_base", 10**400), ("visibility_timeout", 0), ("visibility_timeout", -3.0),
    ("visibility_timeout", 7 * 86400 + 1), ("retention", -1), ("retention", float("inf")), ("nope", 1),
]
bad_config = st.sampled_from(_BAD).map(lambda kv: ("invalid", *kv))


@dataclass
class MJob:
    id: int
    queue: str
    priority: int
    payload: str
    task_id: str
    max_retries: int | None
    next_run_at: float
    expires_at: float | None
    created_at: float
    updated_at: float
    state: str = "pending"
    attempts: int = 0
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    last_error: str | None = None
    history: list[str] = field(default_factory=list)


class JobStoreMachine(RuleBasedStateMachine):
    """One SQLite file per example; a Clock moved by the rules; the model in self.jobs."""

    def __init__(self) -> None:
        super().__init__()
        COUNTS["model: state machines run"] += 1
        self.dir = scratch_path()
        self.path = os.path.join(self.dir, "queue.db")
        self.clock = Clock()
        self.store = JobStore(self.path, clock=self.clock)
        self.jobs: dict[int, MJob] = {}
        self.issued: list[int] = []
        self.config: dict[str, Any] = {
            "max_retries": 3, "backoff_base": 2.0, "visibility_timeout": 30.0, "retention": 86400.0,
        }
        self.serial = 0
        self.store.declare_queue("b", {"x-max-priority": B_MAX_PRIORITY, "x-message-ttl": B_TTL * 1000})

    def teardown(self) -> None:
        try:
            if os.path.exists(self.path):
                assert integrity(self.path) == ["ok"]
                assert schema_tables(self.path) == TABLES
                # Nothing lives only in this connection: a second connection sees the same rows.
                other = JobStore(self.path, clock=self.clock)
                try:
                    assert [_key(j) for j in other.list_jobs()] == [_key(j) for j in self.store.list_jobs()]
                finally:
                    other.close()
        finally:
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- model helpers ----------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.clock.now

    def _step(self, name: str) -> None:
        COUNTS["model: steps"] += 1
        COUNTS[f"model: step {name}"] += 1

    def _ready(self, queue: str) -> list[MJob]:
        now = self.now
        rows = [
            j for j in self.jobs.values()
            if j.queue == queue and j.state in WAITING and j.next_run_at <= now
            and (j.expires_at is None or j.expires_at > now)
        ]
        return sorted(rows, key=lambda j: (-j.priority, j.id))

    def _select(self, queues: tuple[str, ...], limit: int) -> list[MJob]:
        """What a claim over `queues` takes: across all of them (a queue named twice counts once),
        higher priority first, then publication (id) order."""
        if limit <= 0:
            return []
        ready = {j.id: j for queue in set(queues) for j in self._ready(queue)}
        return sorted(ready.values(), key=lambda j: (-j.priority, j.id))[:limit]

    def _pick(self, data: st.DataObject, prefer: str | None) -> int:
        """A job id: usually one in state `prefer`, sometimes any id ever issued, or a new one."""
        candidates = sorted(j.id for j in self.jobs.values() if prefer is None or j.state == prefer)
        how = data.draw(st.sampled_from(["preferred", "preferred", "preferred", "any", "unknown"]))
        if how == "preferred" and candidates:
            return data.draw(st.sampled_from(candidates))
        if how == "any" and self.issued:
            return data.draw(st.sampled_from(self.issued))
        return (max(self.issued) if self.issued else 0) + data.draw(st.integers(1, 3))

    def _insert(self, spec: tuple[Any, ...]) -> NewJob:
        queue, priority, eta, max_retries, ttl = spec
        self.serial += 1
        return NewJob(
            queue=queue,
            payload=f'{{"n": {self.serial}, "q": "{queue}"}}',
            priority=priority,
            next_run_at=None if eta is None else self.now + eta,
            task_id=f"task-{self.serial}",
            task_name="fuzz.task",
            max_retries=max_retries,
            expires_at=None if ttl is None else self.now + ttl,
        )

    def _model_insert(self, job_id: int, new: NewJob) -> None:
        now = self.now
        assert job_id not in self.jobs and (not self.issued or job_id > max(self.issued)), (
            f"id {job_id} reused (issued so far: {self.issued[-5:]})"
        )
        cap = B_MAX_PRIORITY if new.queue == "b" else 9
        expires_at = new.expires_at
        if expires_at is None and new.queue == "b":
            expires_at = now + B_TTL
        self.issued.append(job_id)
        self.jobs[job_id] = MJob(
            id=job_id, queue=new.queue, priority=min(new.priority, cap), payload=new.payload,
            task_id=new.task_id or "", max_retries=new.max_retries,
            next_run_at=now if new.next_run_at is None else new.next_run_at,
            expires_at=expires_at, created_at=now, updated_at=now,
        )

    # -- publishing -------------------------------------------------------------------------------

    @initialize(
        batch=st.lists(specs, min_size=2, max_size=8),
        max_retries=st.integers(0, 3),
        visibility_timeout=st.sampled_from([1.0, 5.0, 30.0]),
    )
    def seed(self, batch: list[tuple[Any, ...]], max_retries: int, visibility_timeout: float) -> None:
        """Start from a few jobs and a random configuration."""
        self.set_config(("max_retries", max_retries))
        self.set_config(("visibility_timeout", visibility_timeout))
        self.enqueue_many(batch)

    @rule(spec=specs)
    def enqueue(self, spec: tuple[Any, ...]) -> None:
        self._step("enqueue")
        new = self._insert(spec)
        job_id = self.store.publish(new)
        self._model_insert(job_id, new)

    @rule(batch=st.lists(specs, min_size=0, max_size=4))
    def enqueue_many(self, batch: list[tuple[Any, ...]]) -> None:
        self._step("enqueue_many")
        news = [self._insert(spec) for spec in batch]
        ids = self.store.publish_many(news)
        assert len(ids) == len(news) and ids == sorted(ids)
        for job_id, new in zip(ids, news):
            self._model_insert(job_id, new)

    # -- consuming --------------------------------------------------------------------------------

    @rule(
        queues=st.sampled_from(QUEUE_LISTS),
        limit=st.integers(0, 4),
        owner=st.sampled_from(OWNERS),
        no_ack=st.sampled_from([False, False, False, False, True]),
    )
    def claim(self, queues: tuple[str, ...], limit: int, owner: str, no_ack: bool) -> None:
        """claim() under a lease of visibility_timeout, or (no_ack) take(), which deletes."""
        self._step("take" if no_ack else "claim")
        expected = self._select(queues, limit)
        if no_ack:
            got = self.store.take(list(queues), limit)
            assert [(c.id, c.attempts, c.payload) for c in got] == [
                (j.id, j.attempts + 1, j.payload) for j in expected
            ], "take order or content differs from the model (priority desc, then id)"
            for j in expected:
                del self.jobs[j.id]
            return
        lease = self.store.settings(fresh=True)["visibility_timeout"]
        assert lease == self.config["visibility_timeout"]
        got = self.store.claim(list(queues), limit, owner, lease)
        for j in expected:
            j.state, j.attempts, j.lease_owner = "processing", j.attempts + 1, owner
            j.lease_expires_at, j.updated_at = self.now + lease, self.now
            j.history.append(f"claim {owner}")
        assert [(c.id, c.queue, c.priority, c.attempts, c.task_id, c.payload) for c in got] == [
            (j.id, j.queue, j.priority, j.attempts, j.task_id, j.payload) for j in expected
        ], "claim order or content differs from the model (priority desc, then id)"
        if got:
            COUNTS["model: claims that took jobs"] += 1
        COUNTS["model: retries claimed (attempt > 1)"] += sum(1 for c in got if c.attempts > 1)

    @rule(
        data=st.data(),
        queues=st.sampled_from(QUEUE_LISTS),
        limit=st.integers(1, 4),
        owner=st.sampled_from(OWNERS),
    )
    def work(self, data: st.DataObject, queues: tuple[str, ...], limit: int, owner: str) -> None:
        """A worker's turn: claim, then ack, reject, requeue or keep (and maybe lose) each job."""
        before = {j.id for j in self._held()}
        self.claim(queues, limit, owner, False)
        for job in sorted((j for j in self._held() if j.id not in before), key=lambda j: j.id):
            outcome = data.draw(st.sampled_from(["ack", "reject", "reject", "requeue", "keep", "keep"]))
            if outcome == "ack":
                assert self.store.ack(job.id, owner) is True
                self._ack_model(job)
            elif outcome == "reject":
                assert self.store.fail(job.id, owner, "boom") is self._fail_model(job, None, None)
            elif outcome == "requeue":
                assert self.store.requeue(job.id, owner) is True
                self._requeue_model(job)

    def _held(self) -> list[MJob]:
        return [j for j in self.jobs.values() if j.state == "processing"]

    def _pick_held(self, data: st.DataObject) -> MJob:
        return self.jobs[data.draw(st.sampled_from(sorted(j.id for j in self._held())))]

    def _ack_model(self, job: MJob) -> None:
        job.history.append("ack")
        if self.config["retention"] <= 0:
            del self.jobs[job.id]
        else:
            job.state, job.lease_owner, job.lease_expires_at, job.updated_at = "completed", None, None, self.now

    def _requeue_model(self, job: MJob) -> None:
        job.history.append("requeue")
        job.state, job.attempts, job.next_run_at = "pending", max(job.attempts - 1, 0), self.now
        job.lease_owner, job.lease_expires_at, job.updated_at = None, None, self.now

    def _fail_model(self, job: MJob, max_retries: int | None, base: float | None) -> JobState:
        job.history.append("reject")
        policy_limit = self.config["max_retries"] if max_retries is None else max_retries
        limit = policy_limit if job.max_retries is None else job.max_retries
        base = self.config["backoff_base"] if base is None else base
        job.lease_owner, job.lease_expires_at, job.updated_at = None, None, self.now
        job.last_error = "boom"
        if job.attempts <= limit:
            job.state, job.next_run_at = "failed", self.now + min(float(base) ** job.attempts, MAX_DELAY)
        else:
            job.state = "dead"
        COUNTS[f"model: reject -> {job.state}"] += 1
        return JobState(job.state)

    @precondition(lambda self: self._held())
    @rule(data=st.data(), many=st.booleans())
    def ack(self, data: st.DataObject, many: bool) -> None:
        """The lease holder acks one job, or ack_many() several of the jobs it holds."""
        self._step("ack")
        job = self._pick_held(data)
        owner = job.lease_owner
        if not many:
            assert self.store.ack(job.id, owner) is True
            self._ack_model(job)
            return
        mine = sorted(j.id for j in self._held() if j.lease_owner == owner)
        ids = data.draw(st.lists(st.sampled_from(mine), min_size=1, unique=True))
        assert self.store.ack_many(ids, owner) == []
        for job_id in ids:
            self._ack_model(self.jobs[job_id])

    @precondition(lambda self: self._held())
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        self._step("requeue")
        job = self._pick_held(data)
        assert self.store.requeue(job.id, job.lease_owner) is True
        self._requeue_model(job)

    @precondition(lambda self: self._held())
    @rule(data=st.data(), override=st.one_of(st.none(), st.tuples(st.integers(0, 3), st.sampled_from([1.0, 2.0, 4.0]))))
    def reject(self, data: st.DataObject, override: tuple[int, float] | None) -> None:
        """fail(): the retry policy. `override` is what transport options pass (max_retries, backoff_base)."""
        self._step("reject")
        job = self._pick_held(data)
        max_retries, base = override if override else (None, None)
        got = self.store.fail(job.id, job.lease_owner, "boom", max_retries=max_retries, backoff_base=base)
        assert got is self._fail_model(job, max_retries, base)

    @rule(data=st.data(), verb=st.sampled_from(["ack", "ack_many", "requeue", "reject"]))
    def stale(self, data: st.DataObject, verb: str) -> None:
        """A verb from one who does not hold the lease, or for a job gone or never made: refused."""
        self._step("stale")
        job_id = self._pick(data, "processing")
        job = self.jobs.get(job_id)
        holder = job.lease_owner if job is not None and job.state == "processing" else None
        owner = data.draw(st.sampled_from([o for o in OWNERS if o != holder]))
        if verb == "ack":
            assert self.store.ack(job_id, owner) is False
        elif verb == "ack_many":
            assert self.store.ack_many([job_id], owner) == [job_id]
        elif verb == "requeue":
            assert self.store.requeue(job_id, owner) is False
        else:
            assert self.store.fail(job_id, owner, "late") is None
        COUNTS["model: stale verbs refused"] += 1

    # -- leases and time --------------------------------------------------------------------------

    @rule(owner=st.sampled_from(OWNERS))
    def renew(self, owner: str) -> None:
        self._step("renew")
        lease = self.config["visibility_timeout"]
        held = [j for j in self.jobs.values() if j.state == "processing" and j.lease_owner == owner]
        assert self.store.renew_leases(owner, lease) == len(held)
        for j in held:
            j.lease_expires_at = self.now + lease

    @rule(seconds=st.sampled_from([0.25, 1.0, 2.0, 5.0, 16.0, 31.0, 100.0]), keeper=st.booleans())
    def advance(self, seconds: float, keeper: bool) -> None:
        """Time passes; with `keeper`, a lease keeper's tick follows at once."""
        self._step("advance")
        self.clock.advance(seconds)
        if keeper:
            self._keeper_tick()

    @rule(past=st.booleans())
    def advance_to_next_event(self, past: bool) -> None:
        """Jump to the next lease expiry, retry, ETA, TTL or end of retention (exactly onto it, or
        just past it), then a lease keeper's tick."""
        self._step("advance_to_next_event")
        now = self.now
        retention = self.config["retention"]
        events = [
            t for j in self.jobs.values()
            for t in (
                j.lease_expires_at,
                j.next_run_at if j.state in WAITING else None,
                j.expires_at,
                j.updated_at + retention if j.state == "completed" else None,
            )
            if t is not None and t > now
        ]
        if events:
            self.clock.now = min(events) + (0.5 if past else 0.0)
        self._keeper_tick()

    def _keeper_tick(self) -> None:
        """What the housekeeper does each tick: recover expired leases, expire messages, prune."""
        self._recover()
        self.housekeeping("expire")
        self.housekeeping("prune")

    @rule()
    def recover(self) -> None:
        self._recover()

    def _recover(self) -> None:
        self._step("recover")
        now = self.now
        expected = []
        for j in self.jobs.values():
            if j.state == "processing" and j.lease_expires_at < now:
                limit = self.config["max_retries"] if j.max_retries is None else j.max_retries
                j.state = "dead" if j.attempts >= 1 + limit else "pending"
                j.next_run_at, j.updated_at = now, now
                j.last_error = f"lease of {j.lease_owner} expired"
                j.lease_owner, j.lease_expires_at = None, None
                expected.append((j.id, j.task_id, JobState(j.state), j.attempts))
        got = self.store.recover_expired_leases()
        assert sorted(got) == sorted(expected)
        for _, _, state, _ in got:
            COUNTS[f"model: lease expired -> {state.value}"] += 1
        stuck = [j.id for j in self.store.list_jobs(JobState.PROCESSING) if j.lease_expires_at < now]
        assert stuck == [], f"rows still processing after their lease expired and recovery ran: {stuck}"

    # -- housekeeping -----------------------------------------------------------------------------

    @rule(kind=st.sampled_from(["prune", "purge a", "purge b", "expire", "expire"]))
    def housekeeping(self, kind: str) -> None:
        """prune_completed(), purge(queue) or expire(): each deletes exactly the rows the model says."""
        self._step(kind.split()[0])
        now = self.now
        if kind == "prune":
            cutoff = now - self.config["retention"]
            gone = [j.id for j in self.jobs.values() if j.state == "completed" and j.updated_at < cutoff]
            assert self.store.prune_completed() == len(gone)
        elif kind.startswith("purge"):
            queue = kind.split()[1]
            gone = [j.id for j in self.jobs.values() if j.queue == queue and j.state in WAITING]
            assert self.store.purge(queue) == len(gone)
        else:
            gone = [
                j.id for j in self.jobs.values()
                if j.state in WAITING and j.expires_at is not None and j.expires_at <= now
            ]
            assert self.store.expire() == ([], len(gone))
        for job_id in gone:
            del self.jobs[job_id]

    # -- the dead-letter queue --------------------------------------------------------------------

    def _revive(self, job: MJob) -> None:
        job.state, job.attempts, job.next_run_at, job.updated_at = "pending", 0, self.now, self.now

    @rule(data=st.data(), action=st.sampled_from(["retry", "retry", "retry all", "purge"]))
    def dlq(self, data: st.DataObject, action: str) -> None:
        """dlq_retry(id) (JobNotFound or InvalidTransition unless the job is dead), dlq_retry_all(),
        dlq_purge()."""
        self._step(f"dlq {action}")
        dead = sorted(j.id for j in self.jobs.values() if j.state == "dead")
        if action == "retry all":
            assert sorted(self.store.dlq_retry_all()) == dead
            for job_id in dead:
                self._revive(self.jobs[job_id])
            return
        if action == "purge":
            assert self.store.dlq_purge() == len(dead)
            for job_id in dead:
                del self.jobs[job_id]
            return
        job_id = self._pick(data, "dead")
        job = self.jobs.get(job_id)
        if job is None:
            with pytest.raises(JobNotFound):
                self.store.dlq_retry(job_id)
        elif job.state != "dead":
            with pytest.raises(InvalidTransition):
                self.store.dlq_retry(job_id)
        else:
            self.store.dlq_retry(job_id)
            self._revive(job)
            COUNTS["model: dlq retry of a dead job"] += 1

    # -- settings ---------------------------------------------------------------------------------

    @rule(setting=st.one_of(good_config, good_config, bad_config))
    def set_config(self, setting: tuple[Any, ...]) -> None:
        """A valid setting is stored and read back; an invalid one raises InvalidConfig and writes nothing."""
        if setting[0] == "invalid":
            self._set_bad_config(setting[1:])
            return
        self._step("set_config")
        key, value = setting
        name, typed = self.store.set_config(key, value)
        assert name == key.strip().replace("-", "_").lower()
        assert typed == float(value) and type(typed) is type(self.config[name])
        self.config[name] = typed
        assert self.store.settings(fresh=True) == self.config

    def _set_bad_config(self, setting: tuple[Any, ...]) -> None:
        self._step("set_bad_config")
        before = config_rows(self.path)
        with pytest.raises(InvalidConfig):
            self.store.set_config(*setting)
        assert config_rows(self.path) == before
        assert self.store.settings(fresh=True) == self.config

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def rows_match_the_model(self) -> None:
        rows = self.store.list_jobs()
        ids = [j.id for j in rows]
        assert len(ids) == len(set(ids)), "a job id appears twice"
        assert set(ids) == set(self.jobs), (
            f"lost: {sorted(set(self.jobs) - set(ids))}, unexpected: {sorted(set(ids) - set(self.jobs))}"
        )
        for row in rows:
            m = self.jobs[row.id]
            assert (
                row.state.value, row.attempts, row.lease_owner, row.lease_expires_at, row.queue,
                row.priority, row.payload, row.task_id, row.max_retries, row.expires_at,
                row.next_run_at, row.created_at, row.updated_at, row.last_error,
            ) == (
                m.state, m.attempts, m.lease_owner, m.lease_expires_at, m.queue,
                m.priority, m.payload, m.task_id, m.max_retries, m.expires_at,
                m.next_run_at, m.created_at, m.updated_at, m.last_error,
            ), f"job {row.id} differs from the model; model history: {m.history}"

    @invariant()
    def counts_match_the_model(self) -> None:
        for state in ("processing", "failed", "dead", "completed"):
            if any(j.state == state for j in self.jobs.values()):
                COUNTS[f"model: steps with a {state} job"] += 1
        expected = {s: 0 for s in JobState}
        by_queue: dict[str, dict[JobState, int]] = {}
        for j in self.jobs.values():
            expected[JobState(j.state)] += 1
            by_queue.setdefault(j.queue, {s: 0 for s in JobState})[JobState(j.state)] += 1
        assert self.store.counts() == expected
        assert self.store.counts_by_queue() == by_queue
        now = self.now
        for queue in QUEUES:
            waiting = [j for j in self.jobs.values() if j.queue == queue and j.state in WAITING]
            live = [j for j in waiting if j.expires_at is None or j.expires_at > now]
            assert self.store.queue_size(queue) == len(live)
            due = min((j.next_run_at for j in waiting), default=None)
            assert self.store.next_due([queue]) == due
        pending = [j.created_at for j in self.jobs.values() if j.state == "pending"]
        assert self.store.oldest_pending_created_at() == (min(pending) if pending else None)


def _key(job: Any) -> tuple[Any, ...]:
    return (job.id, job.state, job.attempts, job.lease_owner, job.next_run_at, job.payload)


TestJobStoreModel = JobStoreMachine.TestCase
TestJobStoreModel.settings = rel_settings(max_examples=100, stateful_step_count=50)
