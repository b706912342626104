"""Puts `tests/` on `sys.path`, so the benchmarks and scripts can use the test rigs (`tests/rigs`).

The rigs (random adapter packages, load generators) are test code: they ship in no product package.
"""

import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
