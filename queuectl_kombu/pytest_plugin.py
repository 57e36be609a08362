"""pytest fixtures for testing a Celery project against queuectl: a real broker and result
backend in a fresh SQLite file, with no server and no Docker (docs/testing.md).

Installed with queuectl as the pytest plugin ``queuectl`` (entry point ``pytest11``). Every
fixture is named ``queuectl_*``, so that being installed changes nothing in a project's tests;
they sit beside Celery's own (``celery.contrib.pytest``: celery_config, celery_app,
celery_worker) and pytest-celery's:

- ``queuectl_db_path`` / ``queuectl_session_db_path``: a new SQLite file per test / per session
  (its path; the file is made on first use);
- ``queuectl_config`` / ``queuectl_session_config``: Celery settings on that file (broker and
  result backend), to return from a project's own ``celery_config`` fixture;
- ``queuectl_app``: a Celery app on the test's file, current for the test (``shared_task``s
  bind to it);
- ``queuectl_worker``: Celery's embedded worker (``start_worker``, solo pool, in a thread) on
  ``queuectl_app``;
- ``queuectl_start_worker``: start the embedded worker on the project's own app, pointed at the
  test's file for the test (``queuectl_start_worker(app)``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

#: What the fixtures set on an app besides the broker and the backend: no retry loop at start-up
#: when something is wrong (a test should fail at once, with the error).
_SETTINGS: dict[str, Any] = {"broker_connection_retry_on_startup": False}


def config_for(path: str | Path) -> dict[str, Any]:
    """Celery settings whose broker and result backend are the queuectl file at `path`."""
    import queuectl_kombu  # noqa: F401  (registers the sqlite:// scheme with kombu)

    url = f"sqlite:///{Path(path).resolve()}"
    return {"broker_url": url, "result_backend": url, **_SETTINGS}


@contextlib.contextmanager
def pointed_at(app: Any, config: dict[str, Any]) -> Iterator[Any]:
    """`app` with `config` (its broker and backend) for the duration, and as it was after: its
    connection pools and result backend closed on the way in and out, so that nothing of the
    previous file is reused."""
    keys = list(config)
    before = {key: app.conf.get(key) for key in keys}
    _release(app)
    app.conf.update(config)
    try:
        yield app
    finally:
        _release(app)
        app.conf.update(before)


def _release(app: Any) -> None:
    """Close what `app` holds open on its broker and backend (they are made again on use)."""
    app.close()  # the connection pool (and the producer pool, when the connection pool was made)
    amqp = app.__dict__.get("amqp")
    producers = None if amqp is None else amqp._producer_pool
    if producers is not None:  # made from kombu's pools, without the app's connection pool
        producers.force_close_all()
        amqp._producer_pool = None
    with contextlib.suppress(AttributeError):
        del app.backend  # a cached property (per thread): the next use makes one on the new URL
    app._local.__dict__.pop("backend", None)


@contextlib.contextmanager
def _embedded_worker(app: Any, **options: Any) -> Iterator[Any]:
    from celery.contrib.testing.worker import start_worker

    options.setdefault("pool", "solo")
    # start_worker returns once the worker consumes (ensure_started); its ping check would need
    # celery.ping registered and `app` current, which a project's own app need not be
    options.setdefault("perform_ping_check", False)
    with start_worker(app, **options) as worker:
        yield worker


@pytest.fixture
def queuectl_db_path(tmp_path: Path) -> str:
    """A new queuectl database file for this test (its path; made on first use)."""
    return str(tmp_path / "queuectl.db")


@pytest.fixture(scope="session")
def queuectl_session_db_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A queuectl database file for the whole session (its path; made on first use)."""
    return str(tmp_path_factory.mktemp("queuectl") / "queuectl.db")


@pytest.fixture
def queuectl_config(queuectl_db_path: str) -> dict[str, Any]:
    """Celery settings on this test's new file: return them from a function-scoped
    ``celery_config`` (Celery's celery_app and celery_worker then use a fresh queue per test)."""
    return config_for(queuectl_db_path)


@pytest.fixture(scope="session")
def queuectl_session_config(queuectl_session_db_path: str) -> dict[str, Any]:
    """Celery settings on the session's file: return them from a session-scoped
    ``celery_config`` (Celery's celery_session_app and celery_session_worker as well)."""
    return config_for(queuectl_session_db_path)


@pytest.fixture
def queuectl_app(queuectl_config: dict[str, Any]) -> Iterator[Any]:
    """A Celery app on this test's file, the current and default app during the test: the
    project's ``shared_task``s are its tasks."""
    from celery import Celery
    from celery.contrib.testing.app import setup_default_app

    app = Celery("queuectl-test", set_as_current=False)
    app.conf.update(queuectl_config)
    with setup_default_app(app):
        app.set_current()
        app.set_default()
        yield app
    app.close()


@pytest.fixture
def queuectl_worker(queuectl_app: Any) -> Iterator[Any]:
    """Celery's embedded worker (solo pool, in a thread of this process) consuming
    ``queuectl_app``'s queue; stopped after the test."""
    with _embedded_worker(queuectl_app) as worker:
        yield worker


@pytest.fixture
def queuectl_start_worker(queuectl_config: dict[str, Any]) -> Iterator[Callable[..., Any]]:
    """``queuectl_start_worker(app, **options)``: point the project's own Celery `app` at this
    test's file (until the test ends) and start Celery's embedded worker on it (`options` go to
    ``celery.contrib.testing.worker.start_worker``: pool, concurrency, queues, ...)."""
    with contextlib.ExitStack() as stack:

        def start(app: Any, **options: Any) -> Any:
            stack.enter_context(pointed_at(app, queuectl_config))
            return stack.enter_context(_embedded_worker(app, **options))

        yield start
