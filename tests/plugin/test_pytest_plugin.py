"""The pytest plugin (queuectl_kombu/pytest_plugin.py): docs/testing.md's example project, run as
a project of its own would run it (a new pytest process in an empty folder), and the fixtures
themselves."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, chord, shared_task

from tests.support.paths import REPO

DOC = REPO / "docs" / "testing.md"


def doc_files() -> dict[str, str]:
    """The code blocks of docs/testing.md that begin with a file name comment: name -> text."""
    blocks = re.findall(r"```python\n# (\S+\.py)\n(.*?)```", DOC.read_text(), flags=re.S)
    return {name: text for name, text in blocks}


def test_the_documented_project_passes_with_no_server(pytester: pytest.Pytester) -> None:
    files = doc_files()
    pytester.makepyfile(**{name[:-3]: files[name] for name in ("tasks.py", "test_tasks.py")})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", timeout=120)
    result.assert_outcomes(passed=3)


def test_the_documented_celery_fixtures_work_on_queuectl(pytester: pytest.Pytester) -> None:
    files = doc_files()
    pytester.makepyfile(**{name[:-3]: files[name] for name in ("conftest.py", "test_with_celery_fixtures.py")})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", timeout=120)
    result.assert_outcomes(passed=1)


def test_the_plugin_changes_nothing_until_asked(pytester: pytest.Pytester) -> None:
    """Installed, the plugin adds fixtures and nothing else: a project's test of the in-memory
    broker still sees Celery's defaults, and every fixture it adds is named queuectl_*."""
    pytester.makepyfile(test_plain="""
        from celery import Celery

        def test_defaults():
            assert Celery("plain").conf.broker_url is None

        def test_fixture_names(request):
            names = request.session._fixturemanager._arg2fixturedefs
            ours = {n for n, defs in names.items() if any("queuectl_kombu" in d.func.__module__ for d in defs)}
            assert ours and all(n.startswith("queuectl_") for n in ours), ours
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", timeout=120)
    result.assert_outcomes(passed=2)


@shared_task(name="plugin.double")
def double(x: int) -> int:
    return 2 * x


@shared_task(name="plugin.total")
def total(numbers: list[int]) -> int:
    return sum(numbers)


def test_queuectl_worker_runs_shared_tasks_on_a_file_of_the_test(queuectl_app: Celery, queuectl_worker: Any,
                                                                 queuectl_db_path: str) -> None:
    assert queuectl_app.conf.broker_url == f"sqlite:///{Path(queuectl_db_path).resolve()}"
    assert double.delay(21).get(timeout=10) == 42
    assert chord(double.s(i) for i in range(3))(total.s()).get(timeout=10) == 6
    assert Path(queuectl_db_path).exists()


def test_queuectl_start_worker_points_an_app_at_the_test_file(queuectl_start_worker: Any,
                                                                       queuectl_db_path: str) -> None:
    app = Celery("project", broker="redis://nowhere.invalid:6379/0", backend="redis://nowhere.invalid:6379/0")

    @app.task(name="project.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    queuectl_start_worker(app)
    assert app.conf.broker_url.endswith(str(Path(queuectl_db_path).resolve()))
    assert mul.delay(6, 7).get(timeout=10) == 42


def test_pointed_at_puts_the_app_back(tmp_path: Path) -> None:
    from queuectl_kombu.pytest_plugin import config_for, pointed_at

    app = Celery("project", broker="redis://nowhere.invalid:6379/0")
    with pointed_at(app, config_for(tmp_path / "q.db")):
        assert app.conf.broker_url == f"sqlite:///{(tmp_path / 'q.db').resolve()}"
    assert app.conf.broker_url == "redis://nowhere.invalid:6379/0"
    assert app.conf.result_backend is None
