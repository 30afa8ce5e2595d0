"""bench/proctree.py, which the archive bench reports each import's memory with: every
process a command starts is read and named, so a helper's peak is not taken for the
command's own, and the bench's own peak is not taken for either."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import proctree

# A child that holds (touches) MB megabytes for a second, well past the interval
# between readings (VmHWM keeps the peak: one reading while it runs is enough).
HOLDER = ("import sys, time; data = bytearray(int(sys.argv[1]) * 2**20); "
          "data[::4096] = bytes(len(data[::4096])); time.sleep(1)")
PARENT = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {HOLDER!r}, " \
         "'80', '--holder'], check=True)"


def test_each_process_of_a_command_is_named_with_its_own_peak() -> None:
    tree = proctree.run([sys.executable, "-c", PARENT], "parent",
                        [("--holder", "memory holder")])
    peaks = {p.name: proctree.mb(p.peak_kb) for p in tree.processes}
    assert set(peaks) == {"parent", "memory holder"}
    assert peaks["memory holder"] >= 80
    assert peaks["parent"] < 60
    assert tree.largest.name == "memory holder"


def test_the_benchmarks_own_peak_is_not_the_commands() -> None:
    """wait4's ru_maxrss of a command Python started is never below the starter's
    peak (exec keeps a vforked child's high-water mark): 300 MB held here made a
    small command "peak" above 300 MB."""
    held = bytearray(300 * 2**20)
    held[::4096] = bytes(len(held[::4096]))
    tree = proctree.run([sys.executable, "-c", HOLDER, "20"], "holder")
    assert 20 <= proctree.mb(tree.largest.peak_kb) < 100
    del held


def test_a_helper_without_a_given_name_is_called_by_its_program_and_first_word() -> None:
    assert proctree.name_of(["/usr/bin/git", "--git-dir=/x/0.git", "fast-import",
                             "--quiet"], ()) == "git fast-import"
    assert proctree.name_of(["git", "-c", "core.abbrev=40", "cat-file", "--batch"],
                            ()) == "git cat-file"
    assert proctree.name_of(["shard[0]"], ()) == "shard[0]"


def test_a_forked_helper_is_named_after_its_parent() -> None:
    forking = ("import os, time\nif os.fork() == 0:\n"
               "    data = bytearray(40 * 2**20); data[::4096] = bytes(len(data[::4096]))\n"
               "    time.sleep(1); os._exit(0)\nos.wait()")
    tree = proctree.run([sys.executable, "-c", forking], "parent")
    peaks = {p.name: proctree.mb(p.peak_kb) for p in tree.processes}
    assert peaks["parent, forked"] >= 40
