"""Every kernel compiles ahead of time for sm_80 and sm_90 (no GPU needed) at every config its launchers
may use (kernels/configs.py: the default and every autotuning config), without spilling.

The Triton interpreter accepts code the real compiler rejects, so this catches what the CPU tests cannot.
The contract: ptxas reports 0 bytes of spill stores for every kernel, under the register cap the
kernel is compiled with (kernels/aot.py explains why a stack frame alone is not a spill, and
kernels/configs.register_budget why the scan kernels set their cap). Checked with triton 3.6, 3.8 and 3.9.
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
    assert row["spill_bytes"] >= 0, "ptxas printed no resource report"
    assert row["spill_bytes"] == 0, f"{label} spills {row['spill_bytes']} bytes on sm_{arch} ({row['registers']} registers)"
