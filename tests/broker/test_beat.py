"""celery beat on the SQLite broker: a periodic task is sent on schedule and run by a worker."""

from __future__ import annotations

from tests.support.waiting import wait_for

from .kit import Env


def test_beat_runs_a_periodic_task(env: Env) -> None:
    schedule = env.workdir / "beat-schedule"
    beat = env.celery("beat", "beat", "-s", str(schedule), "--max-interval", "1", "-l", "INFO",
                      BTEST_BEAT_EVERY="1.5")
    worker = env.worker("beatw", pool=("-P", "solo"), events=False)

    def runs() -> list:
        for p in (beat, worker):
            if not p.alive():
                raise AssertionError(f"{p.name} exited:\n{p.output()[-3000:]}")
        rows = [r for r in env.runs("run") if r.tag == "beat"]
        return rows if len(rows) >= 3 else []

    rows = wait_for(runs, 60, interval=0.2, what="three runs of the beat task")
    assert len({r.task_id for r in rows}) == len(rows)  # a new task each time
    times = [r.time for r in rows]
    assert times == sorted(times) and times[-1] - times[0] >= 1.5  # spread over the schedule, not a burst
    assert "Scheduler: Sending due task tick (b.record)" in beat.output()
    assert schedule.exists() or any(p.name.startswith("beat-schedule") for p in env.workdir.iterdir())
