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


# A CPU session with the package: import, forward and backward through every op on the "auto"
# backend, a fuse() call and the metrics. Run in a fresh interpreter by the tests below.
CPU_SESSION = """
import torch
import fusionmamba_triton as fm
from fusionmamba_triton.metrics import evaluate
model = fm.FusionMamba(dims=[8, 16, 32, 64], dims_decoder=[64, 32, 16, 8], depths=[1, 1, 1, 1],
                       depths_decoder=[1, 1, 1, 1])
x = torch.rand(1, 1, 64, 96)
y = model(x, x.flip(-1))
assert y.shape == (1, 1, 64, 96)
y.square().mean().backward()
assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("layers.0.") and p.requires_grad)
image = torch.rand(40, 50).numpy()
fused = fm.fuse(model, image, image)
evaluate(image * 255, image * 255, fused * 255, ["ssim", "qabf"])
"""


def _run(script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def _assert_runs_without(package: str, resolve_call: str, checks: str = "") -> None:
    """CPU_SESSION in a fresh interpreter where `package` is absent, then `checks`; `resolve_call` (asking
    for the backend that needs the package) must raise a RuntimeError naming the package.

    sys.modules[package] = None is how Python marks a module as absent: importing it raises
    ModuleNotFoundError and importlib.util.find_spec returns None. Unlike a meta-path hook that
    raises, it leaves `import torch` working on torch versions that probe for triton while they are
    imported (2.14 does).
    """
    script = f"""
import sys
sys.modules["{package}"] = None
""" + CPU_SESSION + f"""
from fusionmamba_triton.ops.backends import resolve_backend
{checks}
try:
    {resolve_call}
except RuntimeError as err:
    assert "{package} package" in str(err), err
else:
    raise AssertionError("{package} backend resolved without {package}")
"""
    result = _run(script)
    assert result.returncode == 0, result.stderr[-3000:]


def test_package_runs_without_triton():
    """With triton not installed, the package imports and runs on the CPU, and asking for the
    triton backend says what is missing."""
    _assert_runs_without("triton", 'resolve_backend("triton", torch.device("cpu"))')


def test_package_runs_without_numba():
    """Without numba, "auto" falls back to the pure-PyTorch scan and LDC on CPUs, the numba kernels are
    never imported, and the explicit backend says why."""
    _assert_runs_without("numba", 'resolve_backend("numba", torch.device("cpu"), has_cpu_kernel=True)', checks="""
assert resolve_backend("auto", torch.device("cpu"), has_cpu_kernel=True) == "torch"
assert "fusionmamba_triton.kernels.selective_scan_cpu" not in sys.modules
assert "fusionmamba_triton.kernels.ldc_cpu" not in sys.modules
""")


def test_cpu_paths_never_load_the_triton_kernels():
    """With triton installed, CPU work on the default backend leaves the Triton kernels unimported (the
    numba CPU kernels, which are what runs there, and the shared shape configs may load) and no module of
    the package holds anything from triton (torch itself may import triton, e.g.
    torch.utils.flop_counter does: that is not the package's doing)."""
    pytest.importorskip("triton")
    script = """
import sys, types
""" + CPU_SESSION + """
cpu_side = {"fusionmamba_triton.kernels", "fusionmamba_triton.kernels.selective_scan_cpu", "fusionmamba_triton.kernels.es2d_scan_cpu",
            "fusionmamba_triton.kernels.ldc_cpu", "fusionmamba_triton.kernels.numba_runtime",
            "fusionmamba_triton.kernels.configs"}
kernels = sorted(m for m in sys.modules if m.startswith("fusionmamba_triton.kernels") and m not in cpu_side)
assert not kernels, kernels
def from_triton(value):
    name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
    return isinstance(name, str) and name.split(".")[0] == "triton"
held = sorted(f"{m}.{k}" for m in list(sys.modules) if m.startswith("fusionmamba_triton") and sys.modules[m]
              for k, v in vars(sys.modules[m]).items() if from_triton(v))
assert not held, held
"""
    result = _run(script)
    assert result.returncode == 0, result.stderr[-3000:]


def test_triton_backend_without_triton_names_the_package(monkeypatch):
    from fusionmamba_triton.ops import backends

    monkeypatch.setattr(backends, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs the triton package"):
        resolve_backend("triton", torch.device("cpu"))
    assert resolve_backend("auto", torch.device("cuda")) == "torch"  # auto falls back instead of failing
