"""Fixtures of the multi-host tier: worker hosts simulated with network namespaces.

- ``lab`` (module): a Linux bridge in the root namespace holding <net>.1/24, and a PostgreSQL
  server of this tier's own listening on <net>.1 only (initdb into a temp dir under /tmp owned by
  the OS user ``postgres``, started with pg_ctl as that user). The shared server on
  127.0.0.1:5432 is never touched.
- ``hosts`` (per test): three network namespaces, each with ``lo`` up and a veth pair whose
  root end is a port of the bridge, the namespace end holding <net>.11, .12 and .13.
- ``cluster`` (per test): a database of its own on the lab's server, and the ``celery worker``
  of each host (hostapp.py, prefork, 4 processes) started through ``ip netns exec`` in its own
  session and stopped by process group (tests/support/processes.py).

Names carry a random suffix, and <net> is a 10.77.N.0/24 no address of the machine is in (picked
under a lock file), so parallel runs never clash. Every teardown runs whether the test passed
or not, in reverse order of creation: workers (SIGTERM, SIGKILL to the group after a deadline),
namespaces and veth links, the server (pg_ctl stop -m immediate) and its data directory, the
bridge. The tier skips, saying why, when it cannot make namespaces (not root, ``ip netns add``
refused) or PostgreSQL's binaries are missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO
from tests.support.processes import Worker, child_env, pid_alive, run, stop_all, tail
from tests.support.waiting import wait_for

HERE = Path(__file__).resolve().parent
#: The address block of the labs: one /24 of it per lab, 10.77.N.0/24.
NET_PREFIX = "10.77"
#: The port of the lab's server (on the lab's own address: no clash with other labs).
PG_PORT = 54329
#: Where the server's binaries are (QUEUECTL_PG_BIN overrides; else the newest installed).
PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))
#: Serialises the choice of a lab's /24 between parallel runs on one machine.
LOCK_FILE = "/tmp/queuectl-multihost.lock"
#: Seconds a worker has to exit after SIGTERM before its group is SIGKILLed.
STOP_GRACE = 10.0
HOST_COUNT = 3
CONCURRENCY = 4


def sh(*argv: str, timeout: float = 30.0, check: bool = True) -> str:
    """Run a command to its end (own session, killed if it overruns); its stdout. A non-zero exit
    raises RuntimeError with its stderr unless `check` is false."""
    done = run(list(argv), dict(os.environ), timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _pg_bin() -> str | None:
    for folder in (os.environ.get("QUEUECTL_PG_BIN"), *PG_BIN_CANDIDATES):
        if folder and all(os.access(os.path.join(folder, exe), os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def unavailable() -> str | None:
    """Why this machine cannot run the tier (None when it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add, veth links)"
    for exe in ("ip", "runuser"):
        if shutil.which(exe) is None:
            return f"{exe} is not installed (iproute2 / util-linux)"
    if _pg_bin() is None:
        return "PostgreSQL's binaries (initdb, pg_ctl, postgres) are not installed (/usr/lib/postgresql/*/bin)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no OS user postgres to run the lab's PostgreSQL server as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'queuectl[postgresql]')"
    probe = f"qprobe{secrets.token_hex(3)}"
    done = run(["ip", "netns", "add", probe], dict(os.environ), 30)
    if done.returncode != 0:
        return f"ip netns add is refused here: {done.stderr.strip()}"
    sh("ip", "netns", "del", probe)
    return None


class Undo:
    """What to undo, newest first; each step runs even when an earlier one failed."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], Any]]] = []

    def push(self, what: str, step: Callable[[], Any]) -> None:
        self.steps.append((what, step))

    def run(self) -> None:
        errors = []
        while self.steps:
            what, step = self.steps.pop()
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - the other steps still run
                errors.append(f"{what}: {exc}")
        if errors:
            raise RuntimeError("cleanup failed:\n" + "\n".join(errors))


def _link_gone(name: str, netns: str | None = None) -> None:
    """Delete a link, if it still exists."""
    argv = ["ip", *(["-n", netns] if netns else []), "link", "del", name]
    done = run(argv, dict(os.environ), 30)
    if done.returncode != 0 and "Cannot find device" not in done.stderr:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


# -- the PostgreSQL server ---------------------------------------------------------------------


class PgServer:
    """The lab's PostgreSQL server: its own data directory, listening on the lab's address."""

    def __init__(self, bin_dir: str, address: str, subnet: str, undo: Undo, keep_log: Path) -> None:
        self.bin = bin_dir
        self.address = address
        self.port = PG_PORT
        owner = pwd.getpwnam("postgres")
        # Under /tmp itself: pytest's tmp_path is in a 0700 directory of root the server cannot enter.
        self.datadir = Path(tempfile.mkdtemp(prefix="queuectl-multihost-pg-", dir="/tmp"))
        undo.push(f"remove {self.datadir}", lambda: shutil.rmtree(self.datadir))
        # its log outlives it, beside the tests' logs (pytest's basetemp)
        undo.push("keep the server log", lambda: self.log.exists() and shutil.copy(self.log, keep_log))
        os.chown(self.datadir, owner.pw_uid, owner.pw_gid)
        os.chmod(self.datadir, 0o700)
        self.log = self.datadir / "server.log"
        self.postmaster_pid: int | None = None
        self._as_postgres("initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                          "--locale=C", "--no-sync", timeout=120)
        with open(self.datadir / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {subnet} trust\n")
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# queuectl multihost lab\n"
                f"listen_addresses = '{address}'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.datadir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\n"
                # A host whose link is cut leaves its sessions open on the server. One cut in the
                # middle of a transaction keeps its row locks until the server gives up on the
                # peer: some 15 minutes of retransmissions with the kernel's defaults (2 hours of
                # keepalive when its last reply was acknowledged). An ack cut after its stats
                # upsert then stops every other worker's acks on that row, and their lease
                # renewals behind them (seen with the defaults: nothing completed for as long as
                # it was watched). Here the server drops a silent client after 1 to 2 s, well
                # within the 5 s leases, as a deployment that expects partitions would.
                "tcp_keepalives_idle = 1\ntcp_keepalives_interval = 1\ntcp_keepalives_count = 1\n"
                "tcp_user_timeout = 1000\n"
                # The server log says when the cut host's sessions end, and who waited on a lock.
                "log_connections = on\nlog_disconnections = on\n"
                "log_lock_waits = on\ndeadlock_timeout = '200ms'\n"
                "log_line_prefix = '%m [%p] %h '\n"
            )
        undo.push("stop the lab's PostgreSQL server", self.stop)
        self._as_postgres("pg_ctl", "-D", str(self.datadir), "-l", str(self.log), "-w", "-t", "60", "start",
                          timeout=90)
        self.postmaster_pid = int((self.datadir / "postmaster.pid").read_text().split()[0])

    def _as_postgres(self, exe: str, *args: str, timeout: float) -> str:
        return sh("runuser", "-u", "postgres", "--", os.path.join(self.bin, exe), *args, timeout=timeout)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.address}:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(self.url(database), autocommit=True, connect_timeout=10)

    def stop(self) -> None:
        """pg_ctl stop -m immediate; the postmaster we started SIGKILLed if it is still there."""
        if self.postmaster_pid is None:
            return
        with contextlib.suppress(Exception):
            self._as_postgres("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "-t", "30", "stop",
                              timeout=45)
        pid = self.postmaster_pid
        if pid_alive(pid) and str(self.datadir) in _cmdline(pid):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 30, what=f"the lab's postmaster (pid {pid}) to exit")
        self.postmaster_pid = None

    def log_tail(self, lines: int = 60) -> str:
        return f"--- PostgreSQL server log ({self.log}) ---\n{tail(self.log, lines)}"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# -- the lab: bridge and server ------------------------------------------------------------------


@dataclass
class Lab:
    """The bridge and the server, shared by the tests of a module."""

    suffix: str
    net: str  # "10.77.N"
    bridge: str
    server: PgServer | None = None
    _hosts: int = 0

    @property
    def server_ip(self) -> str:
        return f"{self.net}.1"

    def next_suffix(self) -> str:
        self._hosts += 1
        return f"{self.suffix}{self._hosts}"


def _used_nets() -> set[str]:
    """The 10.77.N prefixes of every IPv4 address of the root namespace."""
    used = set()
    for line in sh("ip", "-4", "-o", "addr", "show").splitlines():
        parts = line.split()
        if "inet" in parts:
            address = parts[parts.index("inet") + 1]
            if address.startswith(NET_PREFIX + "."):
                used.add(address.rsplit(".", 1)[0])
    return used


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    undo = Undo()
    suffix = secrets.token_hex(3)
    try:
        with open(LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            free = sorted(set(f"{NET_PREFIX}.{n}" for n in range(1, 255)) - _used_nets())
            if not free:
                raise RuntimeError(f"every {NET_PREFIX}.N.0/24 is in use on this machine")
            lab = Lab(suffix=suffix, net=secrets.choice(free), bridge=f"qb{suffix}")
            sh("ip", "link", "add", lab.bridge, "type", "bridge")
            undo.push(f"delete bridge {lab.bridge}", lambda: _link_gone(lab.bridge))
            sh("ip", "addr", "add", f"{lab.server_ip}/24", "dev", lab.bridge)
            sh("ip", "link", "set", lab.bridge, "up")
        keep_log = tmp_path_factory.mktemp("multihost-lab") / "postgresql.log"
        lab.server = PgServer(_pg_bin() or "", lab.server_ip, f"{lab.net}.0/24", undo, keep_log)
        yield lab
    finally:
        undo.run()


# -- hosts: network namespaces -------------------------------------------------------------------


@dataclass
class Host:
    """A simulated machine: a network namespace linked to the lab's bridge by a veth pair."""

    name: str  # host1, host2, ...
    netns: str
    ip: str
    root_link: str  # the veth end in the root namespace (a port of the bridge)
    ns_link: str  # the veth end inside the namespace

    def cut(self) -> None:
        """Cut the host off the network: its port on the bridge goes down. Nothing is sent to
        it or from it any more; its TCP connections just hang (no reset either way)."""
        sh("ip", "link", "set", self.root_link, "down")


@pytest.fixture
def hosts(lab: Lab) -> Iterator[list[Host]]:
    undo = Undo()
    made: list[Host] = []
    try:
        sfx = lab.next_suffix()
        for i in range(1, HOST_COUNT + 1):
            host = Host(name=f"host{i}", netns=f"qh{sfx}{i}", ip=f"{lab.net}.{10 + i}",
                        root_link=f"qr{sfx}{i}", ns_link=f"qn{sfx}{i}")
            sh("ip", "netns", "add", host.netns)
            undo.push(f"delete namespace {host.netns}", lambda h=host: sh("ip", "netns", "del", h.netns))
            sh("ip", "link", "add", host.root_link, "type", "veth", "peer", "name", host.ns_link,
               "netns", host.netns)
            # Deleting one end of a veth pair deletes both (also when a process keeps the namespace).
            undo.push(f"delete link {host.root_link}", lambda h=host: _link_gone(h.root_link))
            sh("ip", "link", "set", host.root_link, "master", lab.bridge, "up")
            sh("ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", host.ns_link)
            sh("ip", "-n", host.netns, "link", "set", host.ns_link, "up")
            sh("ip", "-n", host.netns, "link", "set", "lo", "up")
            made.append(host)
        yield made
    finally:
        undo.run()


# -- the cluster: one worker per host --------------------------------------------------------------


@dataclass
class Cluster:
    """One test's database on the lab's server, and the worker of each host."""

    lab: Lab
    hosts: list[Host]
    database: str
    tmp: Path
    workers: dict[str, Worker] = field(default_factory=dict)
    _conn: Any = None

    @property
    def server(self) -> PgServer:
        assert self.lab.server is not None
        return self.lab.server

    @property
    def url(self) -> str:
        return self.server.url(self.database)

    @property
    def runlog(self) -> Path:
        return self.tmp / "runs.log"

    def query(self, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
        """The rows of one statement, on the test's own connection to its database."""
        if self._conn is None or self._conn.closed:
            self._conn = self.server.connect(self.database)
        return self._conn.execute(statement, params).fetchall()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def start_workers(self, *, quiet: bool) -> dict[str, Worker]:
        """Start the worker of every host and wait until each says it is ready. `quiet` drops
        the INFO lines logged for every message (WARNING and above stay)."""
        env = child_env(HERE, REPO, unset=["MULTIHOST_QUIET"], MULTIHOST_BROKER=self.url,
                        MULTIHOST_RUNLOG=str(self.runlog), PYTHONUNBUFFERED="1")
        if quiet:
            env["MULTIHOST_QUIET"] = "1"
        for host in self.hosts:
            node = f"{host.name}@{socket.gethostname()}"  # ip netns exec keeps the UTS namespace: %h
            argv = ["ip", "netns", "exec", host.netns, sys.executable, "-m", "celery", "-A", "hostapp", "worker",
                    "-P", "prefork", "-c", str(CONCURRENCY), "--without-mingle", "--without-gossip",
                    "-n", f"{host.name}@%h", "-l", "INFO"]
            self.workers[host.name] = Worker(host.name, argv, env=env, cwd=HERE, out=self.tmp / f"{host.name}.log",
                                             hostname=node, ready_timeout=90.0)
        for worker in self.workers.values():
            worker.wait_ready()
        return self.workers

    def describe(self) -> str:
        """What a failed test prints: the jobs by state, the workers' and the server's logs."""
        parts = []
        with contextlib.suppress(Exception):
            rows = self.query("SELECT state, count(*) FROM queuectl.jobs WHERE queue = 'celery' GROUP BY state")
            parts.append(f"jobs by state: {dict(rows)}")
        parts.extend(worker.tail(60) for worker in self.workers.values())
        parts.append(self.server.log_tail())
        return "\n".join(parts)


@pytest.fixture
def cluster(lab: Lab, hosts: list[Host], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    assert lab.server is not None
    database = f"mh_{lab.suffix}_{request.node.name.replace('test_', '')}"[:63]
    with lab.server.connect() as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    found = Cluster(lab=lab, hosts=hosts, database=database, tmp=tmp_path)
    try:
        yield found
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(found.describe())
        found.close()
        stop_all(found.workers.values(), grace=STOP_GRACE)
        with lab.server.connect() as conn:  # FORCE: ends the sessions a cut host left behind
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
