"""How long `listserv` takes to start: the median wall time of N runs of `listserv
--help`, `python -c "import typer"` (the floor a typer program cannot go under) and
`listserv member add` on a SQLite file, the command an admin types most; and the floor
under that one: a bare python importing what it cannot do without (typer, SQLAlchemy's
ORM, sqlmodel, and listserv's model classes), with the collector set as the CLI sets it.

With it, the median CPU time (user + system) of the same runs: on a machine others
share, wall time measures the load as much as the program, CPU time much less so.

    python bench/cli_start.py [--runs 11]

Run it with the python of the virtualenv that has listserv installed: the console
script is looked up next to it.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

LIST = "bench@lists.example.org"
FLOOR = "import gc; gc.disable(); import typer, sqlalchemy.orm, sqlmodel{}; gc.freeze()"


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def median(runs: int, argv_of: Callable[[int], list[str]]) -> tuple[float, float]:
    """Each run gets its own argv (member add needs a new address every time)."""
    walls, cpus = zip(*(timed(argv_of(i)) for i in range(runs)), strict=True)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    runs = parser.parse_args().runs
    script = str(Path(sys.executable).parent / "listserv")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "listserv.toml"
        config.write_text(f'[database]\nurl = "sqlite:///{tmp}/bench.db"\n')
        base = [script, "--config", str(config)]
        subprocess.run([*base, "list", "create", LIST], check=True, stdout=subprocess.DEVNULL)
        rows = [
            ('python -c "import typer"', median(runs, lambda _: [sys.executable, "-c",
                                                                 "import typer"])),
            ("listserv --help", median(runs, lambda _: [script, "--help"])),
            ("listserv member add", median(runs, lambda i: [*base, "member", "add", LIST,
                                                            f"m{i}@example.org"])),
            ("floor: typer + ORM", median(runs, lambda _: [
                sys.executable, "-c", FLOOR.format("")])),
            ("floor: + listserv.models", median(runs, lambda _: [
                sys.executable, "-c", FLOOR.format(", listserv.models")])),
        ]
    print(f"median of {runs} runs: wall, CPU (user + system); load average "
          f"{os.getloadavg()[0]:.2f}")
    for name, (wall, cpu) in rows:
        print(f"{name:<28} {wall:.3f} s  {cpu:.3f} s")


if __name__ == "__main__":
    main()
