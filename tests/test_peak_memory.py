"""The CPU peak-memory reading belongs to the measuring process alone, not to the parent that started it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# A parent that touches BALLAST MiB, then starts a fresh interpreter that reports its own peak: with
# getrusage's ru_maxrss (carried across fork and exec by Linux) the child would report >= BALLAST MiB.
BALLAST = 1536
PARENT = textwrap.dedent(
    """
    import subprocess, sys
    ballast = bytearray(int(sys.argv[1]) * 2**20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    child = "from capsbench.metrics.system import process_peak_rss_mb; print(process_peak_rss_mb())"
    print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout.strip())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the inherited peak is Linux's behaviour")
def test_child_peak_rss_excludes_the_parents_peak():
    def child_peak(ballast_mib: int) -> float:
        run = subprocess.run(
            [sys.executable, "-c", PARENT, str(ballast_mib)], capture_output=True, text=True, check=True
        )
        return float(run.stdout.strip())

    plain, after_ballast = child_peak(0), child_peak(BALLAST)
    # the child imports torch either way; the parent's ballast must not show up in the child's peak
    assert 0 < plain and after_ballast < plain + BALLAST / 2, (plain, after_ballast)
