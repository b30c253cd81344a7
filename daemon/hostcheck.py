"""What subwatch checks and adjusts about the machine it runs on: its descriptor limit, and whether
other users can read the secrets in its config file.

`subwatch run` raises its open-files limit first (`raise_nofile_limit`) and logs a warning for a
config that others can read; `subwatch check-config` prints the same warning (`config_exposure`).
"""

from __future__ import annotations

import grp
import os
import pwd
import resource
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

from daemon.config import Config


@dataclass(frozen=True)
class NofileLimit:
    """RLIMIT_NOFILE before and after `raise_nofile_limit`; `error` says why it was not raised."""

    before: int
    soft: int
    hard: int
    error: str | None = None


def raise_nofile_limit() -> NofileLimit:
    """Raise this process's soft limit on open files to its hard limit and return both.

    Every watched folder holds inotify watches and each HTTP client, ffmpeg pipe
    and model file a descriptor; distributions often start services with a soft
    limit of 1024 and a far higher hard one, which any process may take up. A
    limit that cannot be raised (a sandbox that refuses the call) is left as it
    is, with the reason in `error`: running with fewer descriptors is better
    than not running.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return NofileLimit(soft, soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        return NofileLimit(soft, soft, hard, error=str(exc))
    now, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return NofileLimit(soft, now, hard)


def secrets_in(config: Config) -> list[str]:
    """Given a config, return what secrets it holds, for a person to read ("http.api_key", "1 media
    server token", "2 notify URL(s)"); never the secrets themselves.

    Every notify URL counts, as check-config shows them only as a count: Apprise
    puts tokens in any part of a URL (tgram://BOT_TOKEN/CHAT, a password before
    the @, an ntfy topic in the path), so no part can be told to be harmless.
    """
    found = []
    if config.http is not None and config.http.api_key is not None:
        found.append("http.api_key")
    if config.media_servers:
        found.append(f"{len(config.media_servers)} media server token(s)")
    folders = [*config.folders, *([config.unwatched] if config.unwatched else [])]
    urls = {*config.notify.urls, *(url for rules in folders for url in rules.notify.urls)}
    if urls:
        found.append(f"{len(urls)} notify URL(s)")
    return found


def config_exposure(config: Config) -> str | None:
    """Given a loaded config, return a warning if its file holds a secret and every user of the
    machine may read it (the mode's read bit for others); None if not, or if it cannot be stat'ed.

    The warning names the file, its mode and owner, what it holds and the commands that fix it.
    """
    secrets = secrets_in(config)
    try:
        info = os.stat(config.source)
    except OSError:
        return None
    if not secrets or not info.st_mode & stat.S_IROTH:
        return None
    path = config.source
    return (f"{path} is readable by every user of this machine (mode {stat.S_IMODE(info.st_mode):04o}, "
            f"owner {_owner(info)}) and holds {', '.join(secrets)}: make it readable by root and the "
            f"subwatch group only with `chmod 0640 {_quoted(path)} && chown root:subwatch {_quoted(path)}`")


def _owner(info: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        user = str(info.st_uid)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    return f"{user}:{group}"


def _quoted(path: Path) -> str:
    return shlex.quote(str(path))
