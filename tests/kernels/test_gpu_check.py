"""benchmarks/gpu_check.sh cannot rot: its dry run (--quick: the parts that fit a CI machine) installs
the project as the GPU machine does, into a venv of only the GPU image's packages with no package
index, and runs every step under the Triton interpreter; the summary is the record a GPU run leaves."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytest.importorskip("triton")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu_check"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    command = ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--quick", "--out", str(out), "--python", sys.executable]
    proc = subprocess.run(command,
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else ""
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}\n{summary}"
    for step in ("venv", "install", "tests", "table6", "bench_kernels"):
        assert f"{step}: ok" in summary, f"step {step} missing or failed:\n{summary}"
    assert "passed" in summary.split("## Tests")[1].split("##")[0], summary
    assert "| FusionMamba-tiny |" in summary, summary  # a Table 6 row
    assert "No GPU: achieved memory bandwidth not measured." in summary, summary
    assert "all steps passed" in summary
    # The image has no PyWavelets: the installed package imported and collected its tests without it.
    env_check = subprocess.run([str(out / "venv" / "bin" / "python"), "-c", "import pywt"], capture_output=True)
    assert env_check.returncode != 0, "PyWavelets leaked into the image venv"
