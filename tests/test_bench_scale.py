"""bench/scale.py at a tiny size: the harness runs end to end against two real `listserv
serve` processes and smtp-sink, and its report has every figure, with every member of
the killed post served. Figures are not checked: the bench measures, the test only
keeps the harness working."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_URL

pytestmark = [
    pytest.mark.slow,  # two serve processes, started twice, and smtp-source
    pytest.mark.skipif(not PG_URL, reason="the scale run is PostgreSQL only "
                       "(LISTSERV_TEST_DATABASE_URL)"),
    pytest.mark.skipif(not shutil.which("smtp-sink", path="/usr/sbin:/usr/bin"),
                       reason="needs Postfix's smtp-sink and smtp-source"),
]

BENCH = Path(__file__).resolve().parent.parent / "bench" / "scale.py"


def test_the_scale_harness_reports_every_figure_at_a_tiny_size(tmp_path: Path) -> None:
    output = tmp_path / "scale.md"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--members", "400", "--lists", "4", "--largest", "200",
         "--concurrency", "2", "--database-url", PG_URL, "--timeout", "120",
         "--output", str(output)], capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    report = output.read_text()
    for figure in ("250 for the 200-member list", "copies/s of the large post",
                   "confirmation queued 1 s after", "peak RSS of serve A",
                   "peak RSS of serve B", "per million copies"):
        assert figure in report
    assert "**200 of 200 members served" in report
