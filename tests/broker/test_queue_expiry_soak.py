"""Queues and messages nobody will read disappear on their own: reply queues of remote control
calls, the queues of event receivers that were SIGKILLed, their messages (x-expires, message
TTL, auto-delete, exclusive), with two workers sending heartbeats and answering pings."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.support.waiting import wait_for

from .kit import APPS, Env, wait_answering

PINGS = 100
EVENT_SESSIONS = 20
BATCH = 10


def snapshot(env: Env) -> tuple[list[str], int]:
    queues = [name for (name,) in env.sql("SELECT name FROM queues ORDER BY name")]
    (messages,) = env.sql("SELECT COUNT(*) FROM jobs")[0]
    return queues, messages


@pytest.mark.slow
def test_reply_and_event_queues_of_dead_clients_disappear(env: Env) -> None:
    app = env.app()
    workers = [env.worker(f"soak{i}", pool=("-P", "solo")) for i in range(2)]
    for w in workers:
        wait_answering(w, app)
    permanent = {"celery"} | {f"{w.hostname}.celery.pidbox" for w in workers}
    base_queues, _ = snapshot(env)
    assert permanent <= set(base_queues)
    hosts = {w.hostname for w in workers}

    # 100 remote control calls, each with a reply queue of its own as if each came from a new
    # `celery inspect` process (the bound mailboxes are kept alive so that no oid is reused);
    # half of them leave the second worker's reply behind (limit=1 with two workers answering).
    with app.connection_for_write() as conn:
        mailboxes = []
        for i in range(PINGS):
            mailbox = app.control.mailbox(conn)
            mailboxes.append(mailbox)
            if i % 2:
                replies = mailbox.multi_call("ping", timeout=5, limit=1)
                assert replies and {next(iter(r)) for r in replies} <= hosts
            else:
                host = sorted(hosts)[(i // 2) % 2]
                assert mailbox.call([host], "ping", timeout=5) == [{host: {"ok": "pong"}}]
        assert len({m.oid for m in mailboxes}) == PINGS
    for host in sorted(hosts):
        assert app.control.inspect(destination=[host], timeout=5).ping() == {host: {"ok": "pong"}}
    # ... and three real `celery inspect ping` processes.
    clis = [
        subprocess.Popen([sys.executable, "-m", "celery", "-A", "bapp", "inspect", "ping"], cwd=str(APPS),
                         env=env.environ(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
        for _ in range(3)
    ]
    for cli in clis:
        out, _ = cli.communicate(timeout=60)
        assert cli.returncode == 0 and all(h in out for h in hosts), out

    # 20 `celery events` sessions, each SIGKILLed once its queue is bound and events flow in.
    def bound_receivers() -> set[str]:
        return {q for (q,) in env.sql("SELECT queue FROM bindings WHERE exchange = 'celeryev'")}

    seen: set[str] = set()
    killed = 0
    while killed < EVENT_SESSIONS:
        seen |= bound_receivers()
        batch = [env.celery(f"ev{killed + i}", "events", "--dump") for i in range(BATCH)]
        wait_for(lambda: len(bound_receivers() - seen) >= BATCH and all(
            "heartbeat" in p.output() for p in batch), 60, interval=0.2,
            what="a batch of event receivers to get heartbeats")
        seen |= bound_receivers()
        for p in batch:
            p.signal_group(signal.SIGKILL)
            p.popen.wait(10)
        killed += BATCH
    assert len(seen) >= EVENT_SESSIONS
    peak_queues, peak_messages = snapshot(env)
    print(f"\nafter {PINGS} pings and {EVENT_SESSIONS} killed event sessions: "
          f"{len(peak_queues)} queues, {peak_messages} messages")

    def settled() -> tuple[list[str], int] | None:
        queues, messages = snapshot(env)
        extra = [q for q in queues if q not in permanent]
        return (queues, messages) if len(extra) <= 5 and messages < 50 and not any(
            q.startswith("celeryev.") for q in queues) else None

    queues, messages = wait_for(settled, 90, interval=0.5, what="the dead clients' queues and messages to go")
    extra = [q for q in queues if q not in permanent]
    print(f"settled: {len(queues)} queues ({len(extra)} beyond the task and pidbox queues: {extra}), "
          f"{messages} messages")
    assert len(extra) <= 5, extra
    assert messages < 50
    assert not [q for q in queues if ".reply.celery.pidbox" in q]
    assert env.sql("SELECT COUNT(*) FROM bindings WHERE exchange = 'celeryev'") == [(0,)]
    # The workers are unharmed: their pidbox queues are still there and they still answer.
    assert permanent <= set(queues)
    assert {next(iter(r)) for r in app.control.ping(destination=sorted(hosts), timeout=5)} == hosts
