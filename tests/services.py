"""Private PostgreSQL and Redis servers for tests: each on a free port of 127.0.0.1 with its
files in its own temporary directory, killed, stopped and restarted at a test's will, and
removed afterwards. The machine's own services (and their data) are never touched.

:class:`ServiceUnavailable` says that a server's programs are not installed here; the
fixtures in ``conftest.py`` turn it into a skip (a failure under CI=true).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_ROOT = Path("/usr/lib/postgresql")  # Debian: /usr/lib/postgresql/<major>/bin
PG_OS_USER = "postgres"  # initdb refuses to run as root


class ServiceUnavailable(Exception):
    """The programs (or the OS user) a private server needs are not on this machine."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SAMPLE_PORTS = (
    "ENGINE_LAB_PORT",
    "ENGINE_ADT_PORT",
    "ENGINE_SCHEDULING_PORT",
    "ENGINE_ORDERS_PORT",
    "ENGINE_PHARMACY_ORDERS_PORT",
    "ENGINE_PHARMACY_RESULTS_PORT",
    "ENGINE_IMMUNIZATION_PORT",
    "ENGINE_DOCUMENTS_PORT",
    "ENGINE_CHARGES_PORT",
    "ENGINE_FHIR_PORT",
    "ENGINE_ADT_FHIR_PORT",
    "ENGINE_CONSOLE_PORT",
    "ENGINE_LAB_OUT_PORT",  # the sample's downstream lab and pharmacy: nobody listens there
    "ENGINE_PHARMACY_OUT_PORT",
)
"""The port variables of config/channels.yaml: an engine on the sample config in a test or a
benchmark gets a free port for each, so that it never meets `make run` or another test's engine."""


def sample_ports() -> dict[str, str]:
    """A distinct free port for each variable: the sockets are held until all are chosen (ports
    chosen one at a time, each socket closed at once, can come back twice)."""
    socks = []
    try:
        for _name in SAMPLE_PORTS:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return {name: str(s.getsockname()[1]) for name, s in zip(SAMPLE_PORTS, socks, strict=True)}
    finally:
        for s in socks:
            s.close()


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {[p for p in pids if _alive(p)]} still alive after {timeout} s")
        time.sleep(0.05)


class PrivateRedis:
    """``redis-server`` in the foreground, no persistence: ``kill()`` loses everything it held."""

    def __init__(self):
        exe = shutil.which("redis-server")
        if exe is None:
            raise ServiceUnavailable("redis-server is not installed (apt-get install redis-server)")
        self.exe = exe
        self.dir = Path(tempfile.mkdtemp(prefix="engine-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        """Start on ``self.port``; returns once it answers PING."""
        cmd = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        cmd += ["--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                self.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}: {log}")
            time.sleep(0.02)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: the server and all it held are gone at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        """Kill, then start empty on the same port."""
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def close(self) -> None:
        """Stop and remove the server's directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def pg_bin() -> Path:
    """The newest PostgreSQL's bin directory (Debian's layout, else initdb on PATH)."""
    candidates = sorted(
        (p for p in PG_ROOT.glob("*/bin") if (p / "initdb").exists() and (p / "pg_ctl").exists()),
        key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()],
    )
    if candidates:
        return candidates[-1]
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    raise ServiceUnavailable(f"PostgreSQL server programs not found ({PG_ROOT}/<version>/bin/initdb, initdb on PATH)")


class PrivatePostgres:
    """A PostgreSQL cluster of its own: ``initdb`` in a temporary directory, trust auth, TCP on
    127.0.0.1 at a free port, its unix socket in that directory. Run as the ``postgres`` OS user
    when the tests run as root (initdb refuses root)."""

    def __init__(self):
        self.bin = pg_bin()
        self.runas: str | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(PG_OS_USER)
            except KeyError:
                raise ServiceUnavailable(f"running as root needs the {PG_OS_USER!r} OS user for PostgreSQL") from None
            self.runas = PG_OS_USER
        self.dir = Path(tempfile.mkdtemp(prefix="engine-pg-"))
        if self.runas:
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        self.data = self.dir / "data"
        self.port = free_port()
        try:
            self._pg("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the cluster's ``postgres`` database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, program: str, *args, timeout: float = 60.0) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / program), *map(str, args)]
        if self.runas and shutil.which("runuser"):
            cmd = ["runuser", "-u", self.runas, "--", *cmd]
        elif self.runas:
            cmd = ["su", self.runas, "-c", shlex.join(cmd)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if out.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(map(str, args))} failed: {out.stdout[-1500:]}{out.stderr[-1500:]}")
        return out

    def start(self, timeout: float = 30.0) -> PrivatePostgres:
        """Start and return once it accepts connections. Retried for ``timeout`` seconds: after a
        kill, the old server's shared memory may still be held for a moment."""
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        log = self.dir / "postgres.log"
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._pg("pg_ctl", "-D", self.data, "-l", log, "-w", "-t", "30", "-o", opts, "start")
                return self
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: smart (wait for clients), fast (end sessions) or immediate."""
        self._pg("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def kill(self) -> None:
        """SIGKILL of the postmaster; returns once it and its server processes are gone."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        procs = [pid, *_children(pid)]
        os.kill(pid, signal.SIGKILL)
        for child in procs[1:]:  # they would leave on their own once they notice; do not wait for that
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        _wait_gone(procs, 30)

    def close(self) -> None:
        """Stop at once and remove the cluster's directory."""
        try:
            if self.postmaster_pid() is not None:
                try:
                    self.stop("immediate")
                except Exception:
                    self.kill()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
