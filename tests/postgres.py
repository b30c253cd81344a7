"""A real PostgreSQL server for the tests: Debian's `postgresql` binaries, `initdb` and `pg_ctl` in a
temp folder, run as an unprivileged user (PostgreSQL refuses root), on a free port of 127.0.0.1.

Each test gets a database of its own (`fresh_url`), dropped by the next run's temp cleanup with the
server's folder. (After procrastinate's and pgqueuer's conftest: a real server, a database per test.)
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import time
from itertools import count
from pathlib import Path

_USERS = ("postgres", "nobody")  # the unprivileged user the server runs as when the tests run as root


def bin_dir() -> Path | None:
    """Return the folder of Debian's PostgreSQL binaries (the newest version), or None if absent."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """A running server in `folder`, owned by the user it runs as; `stop()` ends it."""

    def __init__(self, folder: Path) -> None:
        binaries = bin_dir()
        if binaries is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
        self._bin = binaries
        self.folder = folder
        self.port = free_port()
        self._run_as = self._user()
        self._numbers = count(1)
        folder.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            os.chmod(folder, 0o755)
            os.chown(folder, self._run_as.pw_uid, self._run_as.pw_gid)
            for parent in folder.parents:  # the user must reach its folder through the temp tree
                if parent == Path("/"):
                    break
                os.chmod(parent, os.stat(parent).st_mode | 0o011)
        self._pg("initdb", "-D", str(folder / "data"), "-U", "subwatch", "--auth=trust", "-E", "UTF8",
                 "--no-sync", "--locale=C")
        self.start()

    @staticmethod
    def _user() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        for name in _USERS:
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        raise RuntimeError("running as root, and no postgres or nobody user exists to run PostgreSQL as")

    def _pg(self, program: str, *args: str) -> None:
        command = [str(self._bin / program), *args]
        kwargs: dict = {"check": True, "capture_output": True, "timeout": 120, "cwd": self.folder}
        if self._run_as is not None:
            kwargs.update(user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[])
        try:
            subprocess.run(command, **kwargs)
        except subprocess.CalledProcessError as err:
            raise RuntimeError(f"{program} failed: {err.stderr.decode(errors='replace')}") from err

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://subwatch@127.0.0.1:{self.port}/{database}"

    def fresh_url(self) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = f"t{next(self._numbers)}_{int(time.time() * 1000) % 100000}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self, mode: str = "immediate") -> None:
        self._pg("pg_ctl", "-D", str(self.folder / "data"), "-m", mode, "-w", "stop")

    def start(self) -> None:
        """Start the server again after `stop` (the same port and data)."""
        # fsync off: a test's data need not survive a power cut, and the disk is shared.
        options = (f"-c port={self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.folder} -c fsync=off -c max_connections=200")
        self._pg("pg_ctl", "-D", str(self.folder / "data"), "-l", str(self.folder / "log"), "-o", options,
                 "-w", "start")
