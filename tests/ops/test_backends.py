"""Backend resolution, and the package working without triton installed."""
import os
import subprocess
import sys

import pytest
import torch

from fusionmamba_triton.ops.backends import resolve_backend

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("backend, expected", [("auto", "torch"), ("torch", "torch"), ("reference", "reference")])
def test_cpu_resolution(backend, expected):
    assert resolve_backend(backend, torch.device("cpu")) == expected


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("cuda", torch.device("cpu"))


def test_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs CUDA tensors or TRITON_INTERPRET=1"):
        resolve_backend("triton", torch.device("cpu"))


def test_package_runs_without_triton():
    """With triton unimportable, the model still imports and runs on the torch path."""
    script = """
import sys
class NoTriton:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ImportError("triton is not installed")
sys.meta_path.insert(0, NoTriton())
import torch
import fusionmamba_triton as fm
from fusionmamba_triton.ops.backends import resolve_backend
model = fm.FusionMamba(dims=[8, 16, 32, 64], dims_decoder=[64, 32, 16, 8], depths=[1, 1, 1, 1],
                       depths_decoder=[1, 1, 1, 1]).eval()
x = torch.rand(1, 1, 64, 64)
assert model(x, x).shape == (1, 1, 64, 64)
try:
    resolve_backend("triton", torch.device("cpu"))
except RuntimeError as err:
    assert "triton package" in str(err), err
else:
    raise AssertionError("triton backend resolved without triton")
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
