"""What importing recsys_core does to the process."""

from __future__ import annotations

import os
import subprocess
import sys

PRINT_POLICY = "import recsys_core, os; print(os.environ['OMP_WAIT_POLICY'])"


def python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True).stdout


def test_openmp_threads_sleep_after_a_parallel_region_unless_the_user_chose():
    assert python(PRINT_POLICY).strip() == "PASSIVE"
    assert python(PRINT_POLICY, OMP_WAIT_POLICY="ACTIVE").strip() == "ACTIVE"
