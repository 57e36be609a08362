"""The Django and Flask examples' own test suites, each run as its README says, in a subprocess
(examples/django: `python manage.py test`; examples/flask: `python -m pytest`). Each starts a
real `celery worker` on its own database file; both must pass whole.

The repository's pytest run never collects the examples' tests itself (testpaths is `tests`):
they run here only, with their own settings (examples/flask/pytest.ini keeps the repository's
xdist options out).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.support.paths import REPO
from tests.support.processes import child_env, run

EXAMPLES = REPO / "examples"
#: The variables of this run that must not leak into an example's own run.
FOREIGN = ("DJANGO_SETTINGS_MODULE", "PYTEST_ADDOPTS", "ORDERS_DATABASE", "PROJ_DATABASE", "QUEUECTL_DB")


def test_django_example_passes_its_tests(tmp_path: Path) -> None:
    # The database (and the test runner's test_db.sqlite3 beside it) in this test's directory.
    env = child_env(REPO, unset=FOREIGN, PROJ_DATABASE=str(tmp_path / "db.sqlite3"))
    done = run([sys.executable, "manage.py", "test", "--noinput"], env=env, timeout=120, cwd=EXAMPLES / "django")
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert re.search(r"^Ran 2 tests in ", report, re.MULTILINE), report
    assert re.search(r"^OK$", report, re.MULTILINE), report
    assert not any(tmp_path.iterdir()), "the test database was left behind"


def test_flask_example_passes_its_tests() -> None:
    env = child_env(REPO, unset=FOREIGN)
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], env=env, timeout=120,
               cwd=EXAMPLES / "flask")
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert re.search(r"^2 passed in ", done.stdout, re.MULTILINE), report
