"""Every kernel compiles ahead of time for sm_80 and sm_90 (no GPU needed) at the configs its launchers use.

The Triton interpreter accepts code the real compiler rejects, so this catches what the CPU tests cannot.
Compilation needs real @triton.jit functions, while tests/conftest.py switches the interpreter on, so the
compiles run in one subprocess per kernels module (kernels/report.py --json), and each test checks its row.
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
from fusionmamba_triton.kernels.report import ARCHS, iter_specs  # noqa: E402

NO_SPILL_MODULES = {"selective_scan"}
PARAMS = [pytest.param(module, spec["label"], arch, id=f"{module}-{spec['label']}-sm{arch}")
          for module, spec in iter_specs() for arch in ARCHS]


_RESULTS: dict = {}


def compile_result(module, label, arch):
    """The report row of one compile; the module's kernels are compiled on first request."""
    if module not in _RESULTS:
        env = dict(os.environ, TRITON_INTERPRET="0")
        proc = subprocess.run([sys.executable, "-m", "fusionmamba_triton.kernels.report", "--json", "--module", module],
                              env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-4000:]
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        _RESULTS[module] = {(row["label"], row["arch"]): row for row in rows}
    return _RESULTS[module].get((label, arch))


@pytest.mark.parametrize("module,label,arch", PARAMS)
def test_kernel_compiles(module, label, arch):
    row = compile_result(module, label, arch)
    assert row is not None, "no compile result (spec list differs between processes?)"
    assert row["error"] is None, row["error"]
    if module in NO_SPILL_MODULES and row["spill_bytes"] >= 0:  # -1: cuobjdump unavailable
        assert row["spill_bytes"] == 0, f"{label} spills {row['spill_bytes']} bytes on sm_{arch}"
