"""The dashboard's actions: the DLQ's retry (one, selected, all) and purge, their confirmation,
and the CSRF check every POST passes."""

from __future__ import annotations

from flask.testing import FlaskClient

from queuectl_kombu import JobNotFound, JobState, JobStore

from .conftest import csrf_of, row_id


def token(client: FlaskClient) -> str:
    """The session's CSRF token, as the DLQ page hands it out."""
    return csrf_of(client.get("/dlq").text)


def states(store: JobStore, *keys: str) -> list[JobState]:
    return [store.find_job(k).state for k in keys]


def test_retry_one_dead_job(client: FlaskClient, store: JobStore) -> None:
    dead = row_id(store, "dead-1")
    done = client.post("/actions/dlq-retry", data={"csrf_token": token(client), "target": dead, "next": "/dlq"})
    assert done.status_code == 303 and done.headers["Location"] == "/dlq"
    assert states(store, "dead-1", "dead-2") == [JobState.PENDING, JobState.DEAD]
    assert store.find_job("dead-1").attempts == 0
    assert "pending again: dead-1" in client.get("/dlq").text  # the note, once
    assert "pending again" not in client.get("/dlq").text


def test_retry_selected_dead_jobs(client: FlaskClient, store: JobStore) -> None:
    targets = [row_id(store, "dead-1"), row_id(store, "dead-2")]
    client.post("/actions/dlq-retry", data={"csrf_token": token(client), "target": targets, "next": "/dlq"})
    assert states(store, "dead-1", "dead-2") == [JobState.PENDING, JobState.PENDING]
    assert "pending again: dead-1, dead-2" in client.get("/dlq").text


def test_retry_of_nothing_selected_or_of_a_job_not_dead_says_why(client: FlaskClient, store: JobStore) -> None:
    client.post("/actions/dlq-retry", data={"csrf_token": token(client), "next": "/dlq"})
    assert '<p class="flash error" role="status">select at least one job</p>' in client.get("/dlq").text
    running = row_id(store, "run-1")
    client.post("/actions/dlq-retry", data={"csrf_token": token(client), "target": running, "next": "/dlq"})
    assert f"job {running} is processing, not dead" in client.get("/dlq").text
    assert states(store, "run-1") == [JobState.PROCESSING]


def test_retry_all_asks_first(client: FlaskClient, store: JobStore) -> None:
    csrf = token(client)
    asked = client.post("/actions/dlq-retry-all", data={"csrf_token": csrf, "next": "/dlq"})
    assert asked.status_code == 200
    assert "Move all 2 dead job(s) back to pending, their attempts reset?" in asked.text
    assert 'name="confirmed" value="yes"' in asked.text
    assert states(store, "dead-1", "dead-2") == [JobState.DEAD, JobState.DEAD]  # nothing yet
    done = client.post("/actions/dlq-retry-all", data={"csrf_token": csrf_of(asked.text), "next": "/dlq",
                                                       "confirmed": "yes"})
    assert done.status_code == 303
    assert states(store, "dead-1", "dead-2") == [JobState.PENDING, JobState.PENDING]
    assert "2 dead job(s) back to pending" in client.get("/dlq").text


def test_purge_asks_first_then_deletes_only_dead_jobs(client: FlaskClient, store: JobStore) -> None:
    asked = client.post("/actions/dlq-purge", data={"csrf_token": token(client), "next": "/dlq"})
    assert "Delete all 2 dead job(s) for good? This cannot be undone." in asked.text
    assert store.counts()[JobState.DEAD] == 2
    client.post("/actions/dlq-purge", data={"csrf_token": csrf_of(asked.text), "next": "/dlq", "confirmed": "yes"})
    assert store.counts()[JobState.DEAD] == 0
    for key in ("dead-1", "dead-2"):
        try:
            store.find_job(key)
        except JobNotFound:
            continue
        raise AssertionError(f"{key} was not purged")
    assert store.counts()[JobState.PENDING] == 2
    assert "deleted 2 dead job(s)" in client.get("/dlq").text


def test_a_post_without_the_csrf_token_is_refused(client: FlaskClient, store: JobStore) -> None:
    dead = row_id(store, "dead-1")
    token(client)  # the session has a token; the forged request does not send it
    for data in ({"target": dead}, {"target": dead, "csrf_token": "forged"}):
        refused = client.post("/actions/dlq-retry", data=data)
        assert refused.status_code == 400
        assert "CSRF token is missing or wrong" in refused.text
    fresh = client.application.test_client()  # a browser that never loaded a page: no session
    assert fresh.post("/actions/dlq-purge", data={"csrf_token": "", "confirmed": "yes"}).status_code == 400
    assert states(store, "dead-1", "dead-2") == [JobState.DEAD, JobState.DEAD]


def test_a_post_from_another_site_is_refused(client: FlaskClient, store: JobStore) -> None:
    refused = client.post("/actions/dlq-retry", data={"csrf_token": token(client), "target": row_id(store, "dead-1")},
                          headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403
    assert states(store, "dead-1") == [JobState.DEAD]


def test_the_csrf_token_may_come_as_a_header(client: FlaskClient, store: JobStore) -> None:
    done = client.post("/actions/dlq-retry", data={"target": row_id(store, "dead-1")},
                       headers={"X-CSRF-Token": token(client), "Origin": "http://localhost"})
    assert done.status_code == 303
    assert states(store, "dead-1") == [JobState.PENDING]


def test_an_action_returns_only_to_a_page_of_the_dashboard(client: FlaskClient, store: JobStore) -> None:
    for away in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        done = client.post("/actions/dlq-retry", data={"csrf_token": token(client), "next": away,
                                                       "target": row_id(store, "dead-1")})
        assert done.headers["Location"] == "/"


def test_an_unknown_action(client: FlaskClient) -> None:
    assert client.post("/actions/explode", data={"csrf_token": token(client)}).status_code == 404


def test_cancel_a_waiting_job_asks_first_then_moves_it_to_the_dlq(client: FlaskClient, store: JobStore) -> None:
    waiting = row_id(store, "wait-1")
    page = client.get(f"/jobs/{waiting}")
    assert 'data-action="cancel"' in page.text
    asked = client.post("/actions/cancel", data={"csrf_token": csrf_of(page.text), "target": waiting,
                                                 "next": f"/jobs/{waiting}"})
    assert "Cancel wait-1? A running job is killed" in asked.text
    assert states(store, "wait-1") == [JobState.PENDING]  # nothing yet
    done = client.post("/actions/cancel", data={"csrf_token": csrf_of(asked.text), "target": waiting,
                                                "next": f"/jobs/{waiting}", "confirmed": "yes"})
    assert done.status_code == 303
    job = store.find_job("wait-1")
    assert (job.state, job.last_error) == (JobState.DEAD, "cancelled")
    after = client.get(f"/jobs/{waiting}").text
    assert "job wait-1: cancelled (was pending)" in after
    assert 'data-action="cancel"' not in after and 'data-action="dlq-retry"' in after  # retry undoes it


def test_cancel_of_a_finished_job_says_so_and_changes_nothing(client: FlaskClient, store: JobStore) -> None:
    done_id = row_id(store, "ok-1")
    assert 'data-action="cancel"' not in client.get(f"/jobs/{done_id}").text  # no button on a finished job
    client.post("/actions/cancel", data={"csrf_token": token(client), "target": done_id, "next": "/dlq",
                                         "confirmed": "yes"})
    assert "job ok-1" in client.get("/dlq").text
    assert states(store, "ok-1") == [JobState.COMPLETED]


def test_pause_and_resume_a_queue_from_the_overview(client: FlaskClient, store: JobStore) -> None:
    overview = client.get("/").text
    assert 'data-action="queue-pause"' in overview
    client.post("/actions/queue-pause", data={"csrf_token": csrf_of(overview), "target": "celery", "next": "/"})
    assert store.is_paused("celery")
    page = client.get("/").text
    assert "queue celery paused" in page
    assert 'data-queue="celery" data-paused="yes"' in page and 'data-action="queue-resume"' in page
    client.post("/actions/queue-resume", data={"csrf_token": csrf_of(page), "target": "celery", "next": "/"})
    assert not store.is_paused("celery")
    assert "queue celery resumed" in client.get("/").text


def test_a_paused_queue_without_jobs_is_listed(client: FlaskClient, store: JobStore) -> None:
    store.declare_queue("quiet")
    store.pause_queue("quiet")
    assert 'data-queue="quiet" data-paused="yes"' in client.get("/live/overview").text


def test_metrics_and_healthz_routes(client: FlaskClient, store: JobStore) -> None:
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.content_type.startswith("text/plain; version=")
    assert 'queuectl_jobs{queue="celery",state="dead"} 2.0' in metrics.text
    sick = client.get("/healthz")  # no worker answers this test's file
    assert sick.status_code == 503 and sick.json["ok"] is False
    assert any("worker" in reason for reason in sick.json["reasons"])
    fine = client.get("/healthz?no_workers_ok&max_pending_age=1e9")
    assert fine.status_code == 200 and fine.json["ok"] is True
    assert client.get("/healthz?max_pending_age=soon").status_code == 400


def test_retry_of_selected_jobs_says_which_were_retried_when_one_was_not(client: FlaskClient, store: JobStore) -> None:
    targets = [row_id(store, "dead-1"), row_id(store, "run-1")]
    client.post("/actions/dlq-retry", data={"csrf_token": token(client), "target": targets, "next": "/dlq"})
    page = client.get("/dlq").text
    assert f"pending again: dead-1; job {targets[1]} is processing, not dead" in page
    assert states(store, "dead-1", "run-1") == [JobState.PENDING, JobState.PROCESSING]
