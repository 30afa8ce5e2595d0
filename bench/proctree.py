"""Peak memory of a command and of every process it starts, each by name.

Not wait4's ru_maxrss, for two reasons. It is one number, the largest peak among the
command's process and the descendants it waited for, and both archive imports start
helpers (listserv a parsing process, public-inbox git fast-import and a Xapian shard).
And it counts the peak of the process that started the command: exec folds the old
address space's high-water mark into the new program's, and Python's subprocess forks
with vfork, so that old address space is the bench's own. `true` started by a bench
that once held 400 MB "peaked" at 455 MB; the 441 MB reported for the 1,000,000-message
import was bench/archive.py's own, from generating the mbox in the same process.

So this reads each process of the tree from /proc while the command runs: each one's
own peak (VmHWM, which the kernel keeps for the program since its exec, so a reading
every INTERVAL misses only what a process adds in its last INTERVAL), and the most the
tree held at one reading (the sum of PSS, which counts a page shared by processes once).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

INTERVAL = 0.2  # seconds between readings


@dataclass
class Process:
    """One process of the tree."""

    pid: int
    name: str
    peak_kb: int = 0  # VmHWM at the last reading


@dataclass
class TreeRun:
    """What a command took: wall time, each process's peak, and its output."""

    seconds: float
    processes: list[Process]  # in the order first seen: the command's own first
    together_kb: int  # the largest sum of the tree's PSS at one reading
    output: str

    @property
    def largest(self) -> Process:
        return max(self.processes, key=lambda p: p.peak_kb)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _field_kb(path: str, key: str) -> int | None:
    """A "Key:  123 kB" line of a /proc file; None when the process is gone (or a
    zombie: its memory is no more)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").rstrip("\0").split("\0") if raw else []


def name_of(args: list[str], names: Sequence[tuple[str, str]]) -> str:
    """The first of `names` (a piece of the command line, the name to give) that
    matches, else the program and its first word that is not an option, an option's
    value or a path ("git fast-import"); a process that set its own title ("shard[0]")
    keeps it."""
    line = " ".join(args)
    for piece, name in names:
        if piece in line:
            return name
    words = [w for w in args[1:] if not w.startswith("-") and not {"/", "="} & set(w)]
    return " ".join(" ".join([os.path.basename(args[0]), *words[:1]]).split())[:60]


class _Sampler(threading.Thread):
    """Reads the tree under `root` every INTERVAL until stopped."""

    def __init__(self, root: int, root_name: str, names: Sequence[tuple[str, str]]) -> None:
        super().__init__(daemon=True)
        self.root, self.names = root, names
        self.processes: dict[int, Process] = {root: Process(root, root_name)}
        self.together_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.read()
            self.done.wait(INTERVAL)

    def read(self) -> None:
        together, pending = 0, [(self.root, self.root)]
        while pending:
            pid, parent = pending.pop()
            pending += [(child, pid) for child in _children(pid)]
            peak = _field_kb(f"/proc/{pid}/status", "VmHWM:")
            if peak is None:
                continue
            process = self.processes.get(pid)
            if process is None:
                process = self.processes[pid] = Process(pid, "")
            if pid != self.root and (args := _cmdline(pid)):
                # Named at each reading: a child read between fork and exec, or before
                # it sets its title, would carry its parent's command line.
                process.name = (f"{self.processes[parent].name}, forked"
                                if args == _cmdline(parent) else name_of(args, self.names))
            process.peak_kb = max(process.peak_kb, peak)
            together += _field_kb(f"/proc/{pid}/smaps_rollup", "Pss:") or 0
        self.together_kb = max(self.together_kb, together)


def run(cmd: list[str], root_name: str, names: Sequence[tuple[str, str]] = (),
        env: dict[str, str] | None = None) -> TreeRun:
    """Run a command that must succeed, reading its process tree as it goes. `names`:
    (a piece of the command line, the name to report) for the helpers it starts."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    sampler = _Sampler(proc.pid, root_name, names)
    sampler.start()
    with proc.stdout:
        output = proc.stdout.read().decode(errors="replace")
    proc.wait()
    elapsed = time.monotonic() - start
    sampler.done.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output}")
    seen = [p for p in sampler.processes.values() if p.peak_kb or p.pid == proc.pid]
    return TreeRun(elapsed, seen, sampler.together_kb, output)


def mb(kb: int) -> float:
    return kb / 1024

