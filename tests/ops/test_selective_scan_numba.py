"""The numba CPU selective scan ("numba" backend) against selective_scan_ref: forward, last state and every
gradient, for every B/C layout and option, plus what "auto" picks, dtypes, layouts and threads."""
import pytest
import torch

from fusionmamba_triton.ops.selective_scan import selective_scan, selective_scan_ref

from tests.ops.common import assert_close
from tests.ops.test_selective_scan import CASES, compare_with_reference, make_inputs, run_with_grads

pytest.importorskip("numba")
from fusionmamba_triton.kernels import selective_scan_cpu  # noqa: E402

RTOL = 2e-5  # tighter than the fp32 table's 1e-4: one fp32 pass with our own exp, no reordering to speak of


def assert_close_rel(actual, expected, rtol, name):
    assert_close(actual, expected, torch.float32, name, rtol=rtol)


NUMBA_CASES = dict(CASES)
NUMBA_CASES.update({
    # Longer than one CHUNK (64) so the backward recomputes several chunks, the last one ragged.
    "several-chunks-grouped": ({"length": 150, "dim": 8, "groups": 4}, {"delta_softplus": True}),
    "several-chunks-constant-zoh": ({"length": 131, "layout": "constant"}, {"discretization": "zoh"}),
    "exactly-two-chunks-variable": ({"length": 128, "layout": "variable", "dstate": 16}, {"delta_softplus": True}),
    "large-delta-softplus-identity": ({"length": 70}, {"delta_softplus": True, "delta_scale": 30.0}),
})


@pytest.mark.parametrize("case", list(NUMBA_CASES), ids=list(NUMBA_CASES))
def test_numba_backend_matches_reference(case):
    overrides, kwargs = dict(NUMBA_CASES[case][0]), dict(NUMBA_CASES[case][1])
    inputs = make_inputs(**overrides)
    scale = kwargs.pop("delta_scale", None)
    if scale is not None:  # pre-activations above 20, where softplus is the identity
        inputs["delta"] = inputs["delta"].abs() * scale
    compare_with_reference("numba", inputs, rtol=RTOL, **kwargs)


def test_auto_picks_numba_on_cpu_and_matches():
    inputs = make_inputs(length=40)
    with torch.no_grad():
        auto = selective_scan(**inputs, delta_softplus=True)
        numba = selective_scan(**inputs, delta_softplus=True, backend="numba")
        torch_path = selective_scan(**inputs, delta_softplus=True, backend="torch")
    assert torch.equal(auto, numba)
    assert not torch.equal(numba, torch_path)  # really a different implementation, yet close:
    assert_close_rel(numba, torch_path, RTOL, "numba vs torch")


def test_non_contiguous_inputs():
    base = make_inputs(batch=2, dim=6, length=33, layout="grouped", groups=3)
    # Same values, permuted strides: (batch, D, L) stored as (L, batch, D), B/C as (L, N, batch, G).
    strided = {k: v if v is None or v.dim() < 3 else v.movedim(-1, 0).contiguous().movedim(0, -1)
               for k, v in base.items()}
    assert not strided["u"].is_contiguous() and not strided["B"].is_contiguous()
    out_ref, last_ref, grads_ref = run_with_grads(selective_scan_ref, base, delta_softplus=True)
    out, last, grads = run_with_grads(selective_scan, strided, delta_softplus=True, backend="numba")
    assert_close_rel(out, out_ref, RTOL, "out")
    assert_close_rel(last, last_ref, RTOL, "last")
    for name in grads_ref:
        assert_close_rel(grads[name], grads_ref[name], RTOL, f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_inputs_are_computed_in_fp32(dtype):
    inputs = make_inputs(length=45, dtype=dtype)
    out, last, grads = run_with_grads(selective_scan, inputs, delta_softplus=True, backend="numba")
    ref_inputs = {k: None if v is None else v.float() for k, v in inputs.items()}
    ref_out, ref_last, ref_grads = run_with_grads(selective_scan_ref, ref_inputs, delta_softplus=True)
    assert out.dtype == dtype and last.dtype == torch.float32
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]  # one rounding of the output to the dtype
    assert_close_rel(out.float(), ref_out, tol, "out")
    assert_close_rel(last, ref_last, RTOL, "last")
    for name in ("u", "delta", "B", "C", "z"):
        assert grads[name].dtype == dtype
        assert_close_rel(grads[name].float(), ref_grads[name], tol, f"grad {name}")


def test_float64_goes_to_torch_under_auto_and_is_refused_by_numba():
    inputs = make_inputs(dtype=torch.float64)
    out = selective_scan(**inputs, delta_softplus=True)
    assert out.dtype == torch.float64
    assert_close_rel(out, selective_scan_ref(**inputs, delta_softplus=True), 1e-12, "float64 auto")
    with pytest.raises(TypeError, match="float32"):
        selective_scan(**inputs, backend="numba")


def test_inference_saves_no_chunk_states():
    inputs = make_inputs(length=100)
    with torch.no_grad():
        _, _, states = torch.ops.fusionmamba.selective_scan(*inputs.values(), True, "mamba", "numba", False)
    assert states.numel() == 0
    _, _, states = torch.ops.fusionmamba.selective_scan(*inputs.values(), True, "mamba", "numba", True)
    assert states.shape[:3] == (2, 6, selective_scan_cpu.n_chunks(100))


def test_backward_recomputes_states_when_the_forward_kept_none():
    """A gradient asked for after a forward that saved nothing (e.g. requires_grad set on a graph input later)."""
    inputs = make_inputs(length=70, with_z=False)
    leaves = {k: None if v is None else v.clone().requires_grad_() for k, v in inputs.items()}
    out, last, states = torch.ops.fusionmamba.selective_scan(*leaves.values(), True, "mamba", "numba", False)
    assert states.numel() == 0
    out.sum().backward()
    ref = {k: None if v is None else v.clone().requires_grad_() for k, v in inputs.items()}
    selective_scan_ref(**ref, delta_softplus=True).sum().backward()
    for name in ("u", "delta", "A", "B", "C", "D", "delta_bias"):
        assert_close_rel(leaves[name].grad, ref[name].grad, RTOL, f"grad {name}")


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_is_torchs_and_stays_torchs(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = make_inputs(batch=3, dim=8, length=66, groups=4)
        out, _, grads = run_with_grads(selective_scan, inputs, delta_softplus=True, backend="numba")
        assert torch.get_num_threads() == threads  # the numba pool does not reset torch's setting
        ref_out, _, ref_grads = run_with_grads(selective_scan_ref, inputs, delta_softplus=True)
        assert_close_rel(out, ref_out, RTOL, "out")
        assert_close_rel(grads["B"], ref_grads["B"], RTOL, "grad B")
    finally:
        torch.set_num_threads(before)


def test_numba_backend_rejects_other_devices():
    inputs = make_inputs()
    with pytest.raises(RuntimeError, match="CPU tensors"):
        selective_scan(**{k: None if v is None else v.to("meta") for k, v in inputs.items()}, backend="numba")


def test_inline_exp_softplus_and_expm1_are_accurate_over_their_range():
    """The kernels' own exp (2^k * polynomial), softplus and expm1, compiled as the scan uses them, against float64."""
    import numba
    import numpy as np

    @numba.njit(**selective_scan_cpu.JIT_FLAGS)
    def apply(fn, xs, out):
        for i in range(xs.shape[0]):
            out[i] = fn(xs[i])

    xs = np.linspace(-87.0, 88.0, 400_001, dtype=np.float32)
    got = np.empty_like(xs)
    apply(selective_scan_cpu._exp, xs, got)
    expected = np.exp(xs.astype(np.float64))
    assert np.max(np.abs(got - expected) / expected) < 3e-7

    xs = np.linspace(-40.0, 40.0, 200_001, dtype=np.float32)
    apply(selective_scan_cpu._softplus, xs, got[:xs.shape[0]])
    expected = np.logaddexp(0.0, xs.astype(np.float64))
    assert np.max(np.abs(got[:xs.shape[0]] - expected) / np.maximum(expected, 1e-30)) < 1e-6

    # expm1 around 0, where exp(x) - 1 would cancel, and across the switch to exp at |x| = 1/2
    xs = np.concatenate([np.linspace(-2.0, 2.0, 100_001, dtype=np.float32), np.float32([-1e-30, 1e-30, 1e-7])])
    apply(selective_scan_cpu._expm1, xs, got[:xs.shape[0]])
    expected = np.expm1(xs.astype(np.float64))
    assert np.max(np.abs(got[:xs.shape[0]] - expected) / np.maximum(np.abs(expected), 1e-38)) < 5e-7
