"""Who may use the dashboard: loopback unless authenticated, HTTP basic auth, and the command's
refusals; the real server started and stopped by signals."""

from __future__ import annotations

import base64
import signal
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask

from queuectl.cli import cli
from queuectl.dashboard import create_app
from queuectl.dashboard.security import is_loopback, parse_credentials

from .conftest import DashboardProc


@pytest.fixture
def guarded(db: Path) -> Iterator[Flask]:
    """The dashboard behind basic auth as ops:s3cret."""
    application = create_app(str(db), ("ops", "s3cret"))
    yield application
    application.extensions["queuectl"].close()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_guards_every_route(guarded: Flask) -> None:
    client = guarded.test_client()
    for path in ("/", "/jobs", "/dlq", "/live/overview", "/static/dashboard.js"):
        refused = client.get(path)
        assert refused.status_code == 401, path
        assert refused.headers["WWW-Authenticate"].startswith('Basic realm="queuectl dashboard"')
        assert client.get(path, headers=basic("ops", "wrong")).status_code == 401
        assert client.get(path, headers=basic("OPS", "s3cret")).status_code == 401
        assert client.get(path, headers=basic("ops", "s3cret")).status_code == 200
    assert client.post("/actions/dlq-purge", data={"confirmed": "yes"}).status_code == 401  # auth before CSRF


def test_without_auth_only_loopback_host_names_are_answered(db: Path) -> None:
    """DNS rebinding: a hostile name that resolves to 127.0.0.1 must not be the dashboard's origin."""
    from queuectl_kombu import JobState, JobStore

    application = create_app(str(db))
    try:
        client = application.test_client()
        for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost"):
            assert client.get("/", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
            refused = client.get("/jobs", headers={"Host": host})
            assert refused.status_code == 403 and "loopback names only" in refused.text, host
        assert client.post("/actions/dlq-purge", headers={"Host": "evil.example"},
                           data={"confirmed": "yes"}).status_code == 403
    finally:
        application.extensions["queuectl"].close()
    assert JobStore(str(db)).counts()[JobState.DEAD] == 2  # the refused purge deleted nothing
    guarded = create_app(str(db), ("ops", "s3cret"))  # with auth, any name (behind a proxy, say)
    try:
        answered = guarded.test_client().get("/", headers={"Host": "queue.example", **basic("ops", "s3cret")})
        assert answered.status_code == 200
    finally:
        guarded.extensions["queuectl"].close()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.com", ""])
def test_other_addresses(host: str) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize("text", ["ops", "ops:", ":s3cret", ""])
def test_credentials_need_both_parts(text: str) -> None:
    with pytest.raises(ValueError, match="USER:PASSWORD"):
        parse_credentials(text)


def test_credentials_keep_colons_in_the_password() -> None:
    assert parse_credentials("ops:a:b") == ("ops", "a:b")


def run_cli(db: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--db", str(db), "dashboard", *args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "example.com"])
def test_a_public_address_without_auth_is_refused(db: Path, host: str) -> None:
    code, err = run_cli(db, "--host", host, env={"QUEUECTL_DASHBOARD_AUTH": ""})
    assert code == 2
    assert err.startswith(f"Error: refusing to listen on {host} without --auth USER:PASSWORD")
    assert err.count("\n") == 1


def test_bad_credentials_are_a_usage_error(db: Path) -> None:
    code, err = run_cli(db, "--auth", "nopassword")
    assert code == 2
    assert "--auth takes USER:PASSWORD" in err and err.count("\n") == 1


def get(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_server_serves_then_stops_on_a_signal(db: Path, dashboards: Callable[..., DashboardProc],
                                                  sig: signal.Signals) -> None:
    proc = dashboards(db, "--port", "0", QUEUECTL_DASHBOARD_AUTH="ops:s3cret")
    url = proc.wait_listening()
    assert url.startswith("http://127.0.0.1:")
    assert get(url) == 401
    assert get(url, basic("ops", "s3cret")) == 200
    proc.popen.send_signal(sig)
    assert proc.wait(10) == 0
    assert "Traceback" not in proc.output()


def test_a_public_address_with_auth_is_served(db: Path, dashboards: Callable[..., DashboardProc]) -> None:
    proc = dashboards(db, "--host", "0.0.0.0", "--port", "0", "--auth", "ops:s3cret")
    url = proc.wait_listening()
    port = url.rstrip("/").rsplit(":", 1)[1]
    assert get(f"http://127.0.0.1:{port}/") == 401
    assert get(f"http://127.0.0.1:{port}/", basic("ops", "s3cret")) == 200
