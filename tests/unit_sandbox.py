"""Run a command inside the parts of the systemd unit's sandbox that need no booted systemd.

    python tests/unit_sandbox.py SPEC.json -- COMMAND [ARG ...]

SPEC (written by `write_spec` from systemd/subwatch.service) holds the unit's UMask=, its
SystemCallFilter= resolved to system call names, SystemCallErrorNumber= and the families of
RestrictAddressFamilies=. They are applied as systemd applies them, with libseccomp: a call outside
the allow list fails with the unit's errno, socket() of another family with EAFNOSUPPORT. Then
COMMAND is exec'd, so its process id is the one the caller started. The containers the tests run in
have no systemd as PID 1 to start the unit itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ, SCMP_CMP_GE = 4, 5
AF_MAX = 64  # above every address family Linux has (46 in 6.x)


def seccomp_available() -> bool:
    return ctypes.util.find_library("seccomp") is not None


def scmp_act_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def syscall_sets() -> dict[str, list[str]]:
    """Return systemd's system call sets ("@system-service": its members, sets and calls) as
    `systemd-analyze syscall-filter` lists them."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    listing = subprocess.run([analyze, "syscall-filter", "--no-pager"], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    sets: dict[str, list[str]] = {}
    current = ""
    for line in listing.splitlines():
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if not line.startswith(" "):
            current = name
            sets[current] = []
        elif current:
            sets[current].append(name)
    return sets


def expand(names: list[str], sets: dict[str, list[str]]) -> set[str]:
    """Given system call and set names, return the system calls they stand for."""
    found: set[str] = set()
    for name in names:
        found |= expand(sets[name], sets) if name.startswith("@") else {name}
    return found


def allowed_syscalls(filters: list[str]) -> set[str]:
    """Given the values of a unit's SystemCallFilter= lines, return the system calls it allows.

    As systemd reads them: a first line without "~" starts an allow list (with @default added),
    later "~" lines take calls out of it, later plain lines add to it.
    """
    assert filters and not filters[0].startswith("~"), "only an allow list is modelled here"
    sets = syscall_sets()
    allowed = expand(["@default"], sets)
    for value in filters:
        names = value.lstrip("~").split()
        if value.startswith("~"):
            allowed -= expand(names, sets)
        else:
            allowed |= expand(names, sets)
    return allowed


def write_spec(path: Path, umask: str, filters: list[str], error: str, families: list[str]) -> Path:
    """Write the sandbox of a unit's UMask=, SystemCallFilter=, SystemCallErrorNumber= and
    RestrictAddressFamilies= values to `path` for this script; return it."""
    spec = {
        "umask": int(umask, 8),
        "allow": sorted(allowed_syscalls(filters)),
        "errno": getattr(errno, error),
        "families": [int(getattr(socket, family)) for family in families],
    }
    path.write_text(json.dumps(spec))
    return path


def _load(lib: ctypes.CDLL, default: int, rules: list[tuple[int, int, list[_ArgCmp]]]) -> None:
    ctx = lib.seccomp_init(default)
    assert ctx, "seccomp_init failed"
    try:
        for action, number, args in rules:
            array = (_ArgCmp * len(args))(*args) if args else None
            code = lib.seccomp_rule_add_array(ctx, action, number, len(args), array)
            assert code == 0, f"seccomp_rule_add_array({number}) failed: {code}"
        code = lib.seccomp_load(ctx)
        assert code == 0, f"seccomp_load failed: {code}"
    finally:
        lib.seccomp_release(ctx)


def apply(spec: dict) -> None:  # type: ignore[type-arg]
    """Given a spec, apply its umask and system call filters to this process (for good)."""
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.c_void_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    os.umask(spec["umask"])
    # RestrictAddressFamilies=: a filter of its own that allows everything but socket() of the others.
    refuse = scmp_act_errno(errno.EAFNOSUPPORT)
    sock = lib.seccomp_syscall_resolve_name(b"socket")
    rules = [(refuse, sock, [_ArgCmp(0, SCMP_CMP_EQ, family, 0)])
             for family in range(AF_MAX) if family not in spec["families"]]
    _load(lib, SCMP_ACT_ALLOW, [*rules, (refuse, sock, [_ArgCmp(0, SCMP_CMP_GE, AF_MAX, 0)])])
    # SystemCallFilter=: every call outside the allow list fails with SystemCallErrorNumber=.
    numbers = {lib.seccomp_syscall_resolve_name(name.encode()) for name in spec["allow"]}
    _load(lib, scmp_act_errno(spec["errno"]), [(SCMP_ACT_ALLOW, n, []) for n in sorted(numbers) if n >= 0])


def main(argv: list[str]) -> None:
    spec_path, separator, *command = argv
    assert separator == "--" and command, __doc__
    apply(json.loads(Path(spec_path).read_text()))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
