"""How a decoder child died, and whether that is evidence against what was in it.

Only a fault is: a signal the process gives itself by crashing (SIGSEGV, SIGABRT,
SIGBUS, SIGFPE, SIGILL), the kernel's OOM kill (a SIGKILL while the cgroup's
oom_kill count rose), running out of memory, an exit with an error status (the
child never exits mid-work otherwise), or no progress for longer than the audio
could need. A SIGKILL or SIGTERM from someone else says nothing about the file:
it charges nobody.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

FAULT_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL})


@dataclass(frozen=True)
class Death:
    """One end of a decoder child. `cause` is for people: "SIGSEGV", "out of memory",
    "no progress for 600 s", "SIGKILL"."""

    cause: str
    fault: bool  # evidence against the file, if it was alone in the child
    memory: bool = False  # it ran out of memory: worth trying again with smaller batches
    at: float = field(default_factory=time.time)

    def charge(self, crashes: int) -> str:
        """The failure reason of a file this death was charged to, for the `crashes`-th time."""
        if self.memory:
            return (f"ran out of memory while transcribing this file alone ({crashes} times, "
                    "the last with the smallest batches)")
        if self.cause.startswith("no progress"):
            return f"the decoder stopped making progress on this file alone {crashes} times ({self.cause})"
        return f"the decoder crashed ({self.cause}) {crashes} times on this file alone"


def of_exit(exitcode: int | None, oom_kills_before: int | None, oom_kills_after: int | None) -> Death:
    """Given a dead child's exit code (negative: the signal) and the cgroup's OOM-kill counts before the
    work and after the death (None where unknown), return how it died."""
    if exitcode is None or exitcode == 0:
        return Death("exited", fault=False)  # asked to stop
    if exitcode > 0:  # a child exits on its own mid-work only when something in it failed for good
        return Death(f"exit status {exitcode}", fault=True)
    number = -exitcode
    name = _signal_name(number)
    if number == signal.SIGKILL and None not in (oom_kills_before, oom_kills_after) \
            and oom_kills_after > oom_kills_before:  # type: ignore[operator]
        return Death("killed by the kernel for memory (OOM)", fault=True, memory=True)
    return Death(name, fault=number in FAULT_SIGNALS)


def stalled(seconds: float) -> Death:
    return Death(f"no progress for {seconds:.0f} s", fault=True)


def out_of_memory(message: str) -> Death:
    return Death(f"out of memory: {message}", fault=True, memory=True)


def oom_kills(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The kernel's count of OOM kills in this process's cgroup (v2), or None where it cannot be read."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        relative = next(line.split("::", 1)[1] for line in lines if line.startswith("0::"))
        events = (cgroup_root / relative.lstrip("/") / "memory.events").read_text()
    except (OSError, StopIteration, IndexError):
        return None
    for line in events.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
