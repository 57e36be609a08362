"""The dashboard's pages through Flask's test client, on a database with jobs in every state."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from queuectl_kombu import JobStore, NewJob
from tests.support.waiting import wait_for

from tests.conftest import ENGINES

from .conftest import SEEDED, XSS_ENV, enqueue, row_id, seed


def counts_shown(html: str) -> dict[str, int]:
    """The cards of the overview: state -> number."""
    found = re.findall(r'data-count="(\w+)">\s*<span class="number">(\d+)</span>', html)
    return {state: int(n) for state, n in found}


def job_ids_shown(html: str) -> list[str]:
    """The ids of the jobs a listing shows, in its order."""
    return re.findall(r'<tr data-job="([^"]+)">', html)


def test_overview_counts_states_and_queues(client: FlaskClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    html = page.text
    assert counts_shown(html) == {"pending": 2, "processing": 1, "completed": 1, "failed": 1, "dead": 2, "total": 7}
    assert '<tr data-queue="batch">' in html and '<tr data-queue="celery">' in html
    assert re.search(r"Oldest pending job: <strong data-oldest>\d+(ms|s)</strong> waiting", html)
    assert 'data-live="/live/overview"' in html


def test_live_overview_follows_the_database(client: FlaskClient, db: Path) -> None:
    enqueue(db, "--command", "echo later", "--queue", "batch")
    panel = client.get("/live/overview")
    assert panel.status_code == 200
    assert "<html" not in panel.text  # a fragment, not a page
    assert counts_shown(panel.text)["pending"] == 3


def test_chart_draws_the_last_hours_completions_and_failures(client: FlaskClient) -> None:
    html = client.get("/").text
    lines = dict(re.findall(r'<polyline class="line (\w+)" points="([^"]+)"', html))
    assert set(lines) == {"completed", "failures"}
    completed = [tuple(map(float, p.split(","))) for p in lines["completed"].split()]
    failures = [tuple(map(float, p.split(","))) for p in lines["failures"].split()]
    assert len(completed) == len(failures) == 60
    # This minute: one completion, three failures (one failed attempt, two dead): the top of the axis is 5.
    assert re.search(r'text-anchor="end">5</text>', html)
    assert failures[-1][1] < completed[-1][1] < completed[0][1]


def test_workers_are_asked_in_the_background(client: FlaskClient) -> None:
    html = client.get("/").text  # the first look starts the watch: the page does not wait for it
    assert "Asking the workers" in html or "No worker answered" in html
    wait_for(lambda: "No worker answered" in client.get("/live/overview").text, 15,
             what="the worker watch to answer")


def test_job_list_shows_every_job_newest_first(client: FlaskClient) -> None:
    html = client.get("/jobs").text
    assert job_ids_shown(html) == list(reversed(SEEDED))
    assert job_ids_shown(client.get("/jobs?order=oldest").text) == list(SEEDED)


def test_job_list_filters(client: FlaskClient) -> None:
    assert job_ids_shown(client.get("/jobs?state=dead").text) == ["dead-2", "dead-1"]
    assert job_ids_shown(client.get("/jobs?queue=batch").text) == ["wait-1"]
    assert job_ids_shown(client.get("/jobs?task=queuectl.run_shell&state=failed").text) == ["retry-1"]
    assert job_ids_shown(client.get("/jobs?task=other.task").text) == []
    assert job_ids_shown(client.get("/jobs?q=DEAD-").text) == ["dead-2", "dead-1"]  # the id, any case
    assert job_ids_shown(client.get("/jobs?q=echo+ok-1").text) == ["ok-1"]  # the command
    # "1": row id 1 (ok-1) and every id that contains it, not dead-2 (row id 5)
    assert job_ids_shown(client.get("/jobs?q=1").text) == [k for k in reversed(SEEDED) if k != "dead-2"]
    assert job_ids_shown(client.get("/jobs?q=%25").text) == []  # LIKE's wildcards are plain text


def test_job_list_pages(client: FlaskClient, db: Path) -> None:
    store = JobStore(str(db))
    store.open()
    try:
        store.publish_many([NewJob(queue="bulk", payload="{}", task_id=f"bulk-{i}") for i in range(60)])
    finally:
        store.close()
    first = client.get("/jobs?queue=bulk&order=oldest").text
    assert job_ids_shown(first) == [f"bulk-{i}" for i in range(50)]
    link = re.search(r'<a rel="next" href="([^"]+)"', first)
    assert link, "no next page link"
    second = client.get(link.group(1).replace("&amp;", "&")).text
    assert job_ids_shown(second) == [f"bulk-{i}" for i in range(50, 60)]
    assert 'rel="next"' not in second
    assert "First page" in second


def test_job_list_refuses_bad_filters(client: FlaskClient) -> None:
    assert client.get("/jobs?state=lost").status_code == 400
    assert client.get("/jobs?order=sideways").status_code == 400
    assert client.get("/jobs?after=x").status_code == 400


def test_job_page_of_a_completed_shell_job(client: FlaskClient, store: JobStore) -> None:
    html = client.get(f"/jobs/{row_id(store, 'ok-1')}").text
    assert '<pre class="command">echo ok-1</pre>' in html
    assert '<dd data-state="completed">' in html
    assert "1 (max retries 3)" in html
    assert '<dd data-result="SUCCESS">' in html
    assert '<pre class="output" data-stream="stdout">hello\nworld\n</pre>' in html
    assert 'data-stream="stderr"' not in html  # an empty stream is left out


def test_job_page_of_a_failed_job_shows_its_error_and_next_run(client: FlaskClient, store: JobStore) -> None:
    job = store.find_job("retry-1")
    html = client.get(f"/jobs/{job.id}").text
    assert '<dd class="error">exit code 1</dd>' in html
    assert re.search(r"<dt>next run</dt><dd>\d{4}-\d\d-\d\dT[\d:.]+Z</dd>", html)
    live = client.get(f"/live/jobs/{job.id}")
    assert live.status_code == 200 and "<html" not in live.text and "exit code 1" in live.text


def test_job_page_of_a_missing_job(client: FlaskClient) -> None:
    page = client.get("/jobs/999999")
    assert page.status_code == 404
    assert "no job with row id 999999" in page.text


def test_dlq_lists_dead_jobs_with_their_error(client: FlaskClient) -> None:
    html = client.get("/dlq").text
    assert job_ids_shown(html) == ["dead-2", "dead-1"]
    assert "dead-1 ran out of retries" in html
    assert 'data-action="dlq-purge"' in html and 'data-action="dlq-retry-all"' in html


def test_job_output_and_environment_are_escaped(client: FlaskClient, store: JobStore) -> None:
    pages = [client.get(f"/jobs/{row_id(store, 'xss-1')}").text, client.get("/jobs").text,
             client.get("/jobs?q=%3Cscript").text]
    for html in pages:
        assert "<script>alert" not in html
        assert "&lt;script&gt;alert(" in html
    job_page = pages[0]
    assert XSS_ENV not in job_page
    assert "\\u003cimg src=x onerror=alert(1)\\u003e" in job_page  # the env as JSON, its < and > escaped
    assert job_ids_shown(pages[2]) == ["xss-1"]


def test_pages_send_guarding_headers(client: FlaskClient) -> None:
    page = client.get("/")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    assert client.get("/static/dashboard.js").status_code == 200


@pytest.fixture(params=ENGINES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """This module's pages on a seeded SQLite file, then on a seeded PostgreSQL database."""
    if request.param == "sqlite":
        target: Any = tmp_path / "queue.db"
    else:
        target = request.getfixturevalue("pg_url")
    seed(target)
    return target
