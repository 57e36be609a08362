"""The dashboard in a real browser: Debian's chromium, headless, driven by Selenium through the
system chromedriver (passed by path: Selenium Manager never downloads anything).

One scenario, as a user follows it: a real `queuectl dashboard` and a real worker on a file with
jobs in every state (one succeeds, one fails into the DLQ, one runs long, one waits for its retry,
one waits in a queue no worker takes). The overview shows the counts and follows a new job without
a reload; a job's page shows its command and output; the dead job is retried from the DLQ page and
seen to complete; a POST without the CSRF token is refused; the long job is cancelled from its
page and ends dead; the worker's queue is paused, a new job stays pending, and runs on resume. With QUEUECTL_SCREENSHOTS=DIR set, the
pages are saved there as PNG (docs/dashboard/ holds the ones the docs show).
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from queuectl_kombu import JobState, JobStore
from tests.support.peers import free_port
from tests.support.processes import Worker, celery_argv, child_env
from tests.support.waiting import wait_for

from .conftest import DashboardProc, enqueue

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Longest wait for anything the browser should see (live updates come every 2 s).
SEE = 20.0


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless chromium, 1280x1180, through the system chromedriver."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1180", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture
def worker(tmp_path: Path, db: Path) -> Iterator[Worker]:
    """A real celery worker of two processes on the test's database (queue celery)."""
    hostname = f"dash-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    proc = Worker("worker", celery_argv("queuectl", "worker", "-c", "2", "-n", hostname, "-l", "INFO"),
                  hostname=hostname, env=child_env(QUEUECTL_DB=str(db)), cwd=tmp_path, out=tmp_path / "worker.out")
    yield proc
    proc.stop(grace=3)  # the long job would hold a warm shutdown for minutes


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """The seed scenario: a job that succeeds, a flaky one that dies at once and succeeds when
    retried, a long one, one that fails and waits (a long backoff), one in a queue nobody takes."""
    path = tmp_path / "queue.db"
    enqueue(path, "--command", "echo hello from queuectl", "--id", "hello")
    # (the worker runs in tmp_path: the marker is left there by the first try)
    enqueue(path, "--command", "test -e flaky.ran || { touch flaky.ran; echo first try fails >&2; exit 3; }",
            "--id", "flaky", "--max-retries", "0")
    enqueue(path, "--command", "sleep 300", "--id", "long")
    enqueue(path, "--command", "exit 1", "--id", "unlucky", "--max-retries", "5")
    enqueue(path, "--command", "echo later", "--id", "later", "--queue", "batch")
    store = JobStore(str(path))
    store.open()
    try:
        store.set_config("backoff-base", 1000)  # the unlucky job's retry waits 1000 s
    finally:
        store.close()
    return path


def click(wait: WebDriverWait, selector: str) -> None:
    """Click the element of `selector` once it is there (found again if a live update replaced it)."""
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, selector).click() or True)


def text_of(driver: WebDriver, selector: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, selector).text)


def count_card(driver: WebDriver, state: str) -> int:
    return int(driver.find_element(By.CSS_SELECTOR, f'[data-count="{state}"] .number').text)


def test_follow_and_steer_the_seed_scenario(
    browser: WebDriver, db: Path, worker: Worker, dashboards: Callable[..., DashboardProc], tmp_path: Path,
) -> None:
    shots = os.environ.get("QUEUECTL_SCREENSHOTS")

    def screenshot(name: str) -> None:
        target = Path(shots) if shots else tmp_path
        target.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(target / f"{name}.png"))

    url = dashboards(db, "--port", str(free_port())).wait_listening()
    worker.wait_ready()
    store = JobStore(str(db))
    store.open()
    try:
        expected = {"hello": JobState.COMPLETED, "flaky": JobState.DEAD, "long": JobState.PROCESSING,
                    "unlucky": JobState.FAILED, "later": JobState.PENDING}
        wait_for(lambda: all(store.find_job(k).state is s for k, s in expected.items()), 30,
                 what="the seed jobs to reach their states", on_fail=worker.tail)

        # The overview: the counts, the worker and its active job; then a new job, seen without a reload.
        browser.get(url)
        # The live panels are replaced every two seconds: an element found just before a
        # replacement is stale when read, and the wait looks again.
        wait = WebDriverWait(browser, SEE, ignored_exceptions=(StaleElementReferenceException,))
        wait.until(lambda d: [count_card(d, s) for s in ("pending", "processing", "completed", "failed", "dead")]
                   == [1, 1, 1, 1, 1])
        wait.until(lambda d: [cell.text for cell in d.find_elements(  # its queues and active job
            By.CSS_SELECTOR, f'[data-worker="{worker.hostname}"] td')][3:] == ["celery", "long"])
        enqueue(db, "--command", "echo even later", "--queue", "batch")
        wait.until(lambda d: count_card(d, "pending") == 2)
        screenshot("overview")

        # The job list, and one job's page: its command and its output.
        browser.get(url + "jobs")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-job="hello"]'))
        screenshot("jobs")
        browser.find_element(By.LINK_TEXT, "hello").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'pre[data-stream="stdout"]'))
        wait.until(lambda d: (text_of(d, "pre.command"), text_of(d, 'pre[data-stream="stdout"]'))
                   == ("echo hello from queuectl", "hello from queuectl"))
        screenshot("job")

        # A POST without the CSRF token, from the page itself, is refused and changes nothing.
        status = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/actions/dlq-purge', {method: 'POST', body: new URLSearchParams({confirmed: 'yes'})})"
            ".then(r => done(r.status), e => done(String(e)));"
        )
        assert status == 400
        assert store.find_job("flaky").state is JobState.DEAD

        # The DLQ: retry the flaky job, follow it to completed on its page.
        browser.get(url + "dlq")
        row = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'tr[data-job="flaky"]'))
        assert "command exited with code 3" in row.text
        screenshot("dlq")
        row.find_element(By.CSS_SELECTOR, 'button[data-action="dlq-retry"]').click()
        wait.until(lambda d: "pending again: flaky" in d.find_element(By.CSS_SELECTOR, ".flash").text)
        browser.get(url + f"jobs/{store.find_job('flaky').id}")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'dd[data-state="completed"]'))
        assert store.find_job("flaky").state is JobState.COMPLETED

        # Cancel the long running job from its page: asked first, then killed by its worker, dead.
        browser.get(url + f"jobs/{store.find_job('long').id}")
        click(wait, 'button[data-action="cancel"]')
        question = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "p.question")).text
        assert question.startswith("Cancel long? A running job is killed")
        browser.find_element(By.CSS_SELECTOR, 'button[data-confirm="cancel"]').click()
        wait.until(lambda d: "job long: cancelled (was running)" in d.find_element(By.CSS_SELECTOR, ".flash").text)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'dd[data-state="dead"]'))
        long = store.find_job("long")
        assert (long.state, long.last_error) == (JobState.DEAD, "cancelled")

        # Pause the worker's queue from the overview: a new job stays pending (the page is seen to
        # update twice with it pending) until Resume, which runs it.
        browser.get(url)
        click(wait, 'tr[data-queue="celery"] button[data-action="queue-pause"]')
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-queue="celery"][data-paused="yes"]'))
        assert store.is_paused("celery")
        enqueue(db, "--command", "echo after the pause", "--id", "held")
        browser.get(url + f"jobs/{store.find_job('held').id}")
        for _ in range(2):
            seen = wait.until(lambda d: text_of(d, "p.updated"))
            wait.until(lambda d: text_of(d, "p.updated") != seen)
            assert store.find_job("held").state is JobState.PENDING
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'dd[data-state="pending"]'))
        screenshot("paused")
        browser.get(url)
        click(wait, 'tr[data-queue="celery"] button[data-action="queue-resume"]')
        wait.until(lambda d: "queue celery resumed" in d.find_element(By.CSS_SELECTOR, ".flash").text)
        wait_for(lambda: store.find_job("held").state is JobState.COMPLETED, 30, what="the held job to run",
                 on_fail=worker.tail)
    finally:
        store.close()
