"""Selective scan: every backend against selective_scan_ref (forward, last state, every gradient),
gradcheck in float64, the custom op (FLOP count, torch.compile) and input validation.

Triton cases run under the CPU interpreter when there is no GPU (tests/conftest.py), so they are small.
"""
import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fusionmamba_triton.ops.backends import interpreter_enabled, triton_available
from fusionmamba_triton.ops.selective_scan import (
    check_selective_scan_inputs,
    selective_scan,
    selective_scan_ref,
    selective_scan_torch,
)

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
needs_triton = pytest.mark.skipif(
    not (triton_available() and (torch.cuda.is_available() or interpreter_enabled())),
    reason="triton needs CUDA or TRITON_INTERPRET=1",
)


def make_inputs(batch=2, dim=6, length=19, dstate=4, layout="grouped", groups=2, with_D=True, with_z=True,
                with_bias=True, dtype=torch.float32, device="cpu", seed=0):
    """Random scan inputs; A strictly negative (the model's -exp(A_log)) and never 0."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    bc_shape = {"constant": (dim, dstate), "variable": (batch, dstate, length),
                "grouped": (batch, groups, dstate, length)}[layout]
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # A, D, delta_bias
    A = -(torch.rand(dim, dstate, generator=g) * 1.5 + 0.2)
    return {
        "u": rand(batch, dim, length), "delta": rand(batch, dim, length, scale=0.5),
        "A": A.to(device=device, dtype=param_dtype),
        "B": rand(*bc_shape), "C": rand(*bc_shape),
        "D": rand(dim).to(param_dtype) if with_D else None, "z": rand(batch, dim, length) if with_z else None,
        "delta_bias": rand(dim, scale=0.5).to(param_dtype) if with_bias else None,
    }


def with_grad(inputs):
    return {k: None if v is None else v.detach().clone().requires_grad_() for k, v in inputs.items()}


def run_with_grads(fn, inputs, seed=1, **kwargs):
    """Forward, last state, and gradients of a fixed random projection of both."""
    leaves = with_grad(inputs)
    out, last = fn(**leaves, return_last_state=True, **kwargs)
    g = torch.Generator().manual_seed(seed)
    loss = (out.float() * torch.randn(out.shape, generator=g).to(out.device)).sum()
    loss = loss + (last * torch.randn(last.shape, generator=g).to(last.device)).sum()
    loss.backward()
    return out, last, {k: v.grad for k, v in leaves.items() if v is not None}


def assert_close_rel(actual, expected, rtol, name):
    """Max abs error relative to the expected tensor's max magnitude."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    scale = expected.abs().max().clamp(min=1e-6)
    err = ((actual.double() - expected.double()).abs().max() / scale).item()
    assert err <= rtol, f"{name}: relative error {err:.2e} > {rtol:.0e}"


def compare_with_reference(backend, inputs, rtol, **kwargs):
    ref_out, ref_last, ref_grads = run_with_grads(selective_scan_ref, inputs, **kwargs)
    out, last, grads = run_with_grads(selective_scan, inputs, backend=backend, **kwargs)
    assert out.dtype == inputs["u"].dtype and last.dtype == torch.float32
    assert_close_rel(out, ref_out, rtol, "out")
    assert_close_rel(last, ref_last, rtol, "last_state")
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert grads[name].dtype == inputs[name].dtype, name
        assert_close_rel(grads[name], ref_grads[name], rtol, f"grad {name}")


CASES = {  # id: make_inputs overrides and scan kwargs
    "grouped-all-options": ({}, {"delta_softplus": True}),
    "grouped-zoh": ({}, {"delta_softplus": True, "discretization": "zoh"}),
    "constant-bc": ({"layout": "constant"}, {"delta_softplus": True}),
    "variable-bc-zoh": ({"layout": "variable"}, {"discretization": "zoh"}),
    "no-optionals": ({"with_D": False, "with_z": False, "with_bias": False}, {}),
    "no-softplus-only-D": ({"with_z": False, "with_bias": False}, {}),
    "length-1": ({"length": 1}, {"delta_softplus": True}),
    "odd-length-odd-dstate": ({"length": 37, "dstate": 3, "layout": "variable"}, {"delta_softplus": True}),
    "channels-not-block-multiple": ({"dim": 5, "groups": 5, "length": 18}, {"delta_softplus": True}),
    "groups-straddle-blocks": ({"dim": 9, "groups": 3, "length": 33}, {"delta_softplus": True}),
    "one-group-per-block": ({"dim": 16, "groups": 2, "length": 20}, {"delta_softplus": True}),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_torch_backend_matches_reference(case):
    overrides, kwargs = CASES[case]
    compare_with_reference("torch", make_inputs(**overrides), 1e-5, **kwargs)


@pytest.mark.parametrize("chunk,block_d", [(4, 2), (7, 3), (64, 128)],
                         ids=["chunk4-block2", "chunk7-block3", "one-chunk"])
def test_torch_backend_chunk_and_block_choices(chunk, block_d):
    inputs = make_inputs(dim=6, length=30, groups=3)
    ref_out, ref_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    out, last = selective_scan_torch(**inputs, delta_softplus=True, chunk=chunk, block_d=block_d)
    assert_close_rel(out, ref_out, 1e-5, "out")
    assert_close_rel(last, ref_last, 1e-5, "last_state")


@needs_triton
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_triton_backend_matches_reference(case, device):
    overrides, kwargs = CASES[case]
    compare_with_reference("triton", make_inputs(device=device, **overrides), 1e-4, **kwargs)


@needs_triton
def test_triton_writes_every_output_element(device, monkeypatch):
    """The launchers' output buffers come NaN-filled: any element the kernels leave unwritten fails."""
    from fusionmamba_triton.kernels import selective_scan as kernels

    inputs = make_inputs(dim=5, groups=5, length=21, device=device)
    real_empty, real_empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(float("nan")))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: real_empty_like(*a, **k).fill_(float("nan")))
    out, last, states = kernels.selective_scan_fwd(**inputs, delta_softplus=True)
    grads = kernels.selective_scan_bwd(torch.ones_like(out), torch.ones_like(last), *inputs.values(), states, True)
    for name, t in [("out", out), ("last", last), ("chunk_states", states), *zip(GRAD_NAMES, grads)]:
        assert torch.isfinite(t).all(), f"{name} has unwritten (NaN) elements"


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_gradients_when_last_state_is_not_used(backend, device):
    inputs = make_inputs(device=device if backend == "triton" else "cpu")
    grads = {}
    for name, fn, kwargs in (("ref", selective_scan_ref, {}), ("ours", selective_scan, {"backend": backend})):
        leaves = with_grad(inputs)
        fn(**leaves, delta_softplus=True, **kwargs).square().sum().backward()
        grads[name] = {k: v.grad for k, v in leaves.items() if v is not None}
    for key, expected in grads["ref"].items():
        assert_close_rel(grads["ours"][key], expected, 1e-4, f"grad {key}")


def test_zoh_with_zero_A_is_the_mamba_limit():
    inputs = make_inputs(with_z=False)
    inputs["A"][:, 0] = 0.0
    zoh = selective_scan(**inputs, discretization="zoh", backend="torch")
    ref = selective_scan_ref(**inputs, discretization="zoh")
    assert_close_rel(zoh, ref, 1e-5, "out")
    assert torch.isfinite(zoh).all()


def test_softplus_is_identity_above_20():
    inputs = make_inputs(with_bias=False, length=5)
    inputs["delta"] = torch.full_like(inputs["delta"], 25.0)
    inputs["A"] = torch.full_like(inputs["A"], -1e-3)
    plain = selective_scan(**inputs, backend="torch")
    softplus = selective_scan(**inputs, delta_softplus=True, backend="torch")
    torch.testing.assert_close(softplus, plain)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("discretization", ["mamba", "zoh"])
def test_gradcheck_float64(backend, discretization):
    inputs = make_inputs(batch=1, dim=4, length=6, dstate=2, groups=2, dtype=torch.float64)
    leaves = with_grad(inputs)

    def fn(*tensors):
        out, last = selective_scan(*tensors, delta_softplus=True, return_last_state=True,
                                   discretization=discretization, backend=backend)
        return out, last

    assert torch.autograd.gradcheck(fn, tuple(leaves[name] for name in GRAD_NAMES), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("with_optionals", [True, False], ids=["D-and-z", "no-D-no-z"])
def test_flop_counter_sees_one_op(backend, with_optionals):
    inputs = make_inputs(batch=2, dim=6, length=11, dstate=4, with_D=with_optionals, with_z=with_optionals)
    with FlopCounterMode(display=False) as counter:
        selective_scan(**inputs, delta_softplus=True, backend=backend)
    expected = 9 * 2 * 11 * 6 * 4 + (2 * 2 * 6 * 11 if with_optionals else 0)
    counts = counter.get_flop_counts()["Global"]
    assert [str(op) for op in counts] == ["fusionmamba.selective_scan"]
    assert counter.get_total_flops() == expected


def test_torch_compile_sees_one_node():
    inputs = make_inputs()
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    compiled = torch.compile(lambda **kw: selective_scan(**kw, delta_softplus=True, backend="torch"),
                             backend=backend, fullgraph=True)
    torch.testing.assert_close(compiled(**inputs), selective_scan(**inputs, delta_softplus=True, backend="torch"))
    assert sum("fusionmamba.selective_scan" in target for target in seen) == 1


def test_backend_dispatch_and_refusal():
    inputs = make_inputs()
    with pytest.raises(ValueError, match="backend must be one of"):
        selective_scan(**inputs, backend="cuda")
    if not interpreter_enabled() and not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="triton backend needs"):
            selective_scan(**inputs, backend="triton")


BAD_INPUTS = {  # id: (mutation of make_inputs(), exception, message fragment)
    "delta-shape": (lambda x: x.update(delta=x["delta"][:, :, :-1]), ValueError, "delta must have u's shape"),
    "z-shape": (lambda x: x.update(z=x["z"][:1]), ValueError, "z must have u's shape"),
    "u-2d": (lambda x: x.update(u=x["u"][0]), ValueError, "u must be"),
    "empty-length": (lambda x: x.update(u=x["u"][..., :0], delta=x["delta"][..., :0], z=None), ValueError,
                     "at least one batch row, channel and time step"),
    "A-channels": (lambda x: x.update(A=x["A"][:-1]), ValueError, "A must be (D, N)"),
    "B-dstate": (lambda x: x.update(B=x["B"][:, :, :-1]), ValueError, "grouped B"),
    "C-length": (lambda x: x.update(C=x["C"][..., :-1]), ValueError, "grouped C"),
    "groups-not-dividing": (lambda x: x.update(B=torch.randn(2, 4, 4, 19)), ValueError, "G dividing D"),
    "constant-B-shape": (lambda x: x.update(B=torch.randn(6, 3)), ValueError, "constant B"),
    "variable-C-batch": (lambda x: x.update(C=torch.randn(1, 4, 19)), ValueError, "variable C"),
    "B-5d": (lambda x: x.update(B=x["B"][None]), ValueError, "B must be"),
    "D-shape": (lambda x: x.update(D=torch.ones(5)), ValueError, "D must be"),
    "bias-shape": (lambda x: x.update(delta_bias=torch.ones(6, 1)), ValueError, "delta_bias must be"),
    "int-u": (lambda x: x.update(u=x["u"].long()), TypeError, "u must be a floating"),
    "int-A": (lambda x: x.update(A=x["A"].int()), TypeError, "A must be a floating"),
    "not-a-tensor": (lambda x: x.update(C=[1.0]), TypeError, "C must be a torch.Tensor"),
    "mixed-devices": (lambda x: x.update(D=x["D"].to("meta")), ValueError, "one device"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_rejected(case):
    mutate, error, message = BAD_INPUTS[case]
    inputs = make_inputs()
    mutate(inputs)
    with pytest.raises(error, match=re.escape(message)):
        selective_scan(**inputs, backend="torch")
    with pytest.raises(error, match=re.escape(message)):
        check_selective_scan_inputs(**inputs)


def test_bad_discretization_is_rejected():
    with pytest.raises(ValueError, match="discretization must be one of"):
        selective_scan(**make_inputs(), discretization="euler")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_half_precision_on_cuda(dtype, backend):
    inputs = make_inputs(dim=64, length=300, dstate=16, groups=4, dtype=dtype, device="cuda")
    ref_inputs = {k: None if v is None else v.float() for k, v in inputs.items()}
    ref_out, ref_last, ref_grads = run_with_grads(selective_scan_ref, ref_inputs, delta_softplus=True)
    out, last, grads = run_with_grads(selective_scan, inputs, backend=backend, delta_softplus=True)
    assert out.dtype == dtype
    rtol = 2e-2 if dtype == torch.float16 else 5e-2
    assert_close_rel(out.float(), ref_out, rtol, "out")
    assert_close_rel(last, ref_last, rtol, "last_state")
    for name in ref_grads:
        assert_close_rel(grads[name].float(), ref_grads[name], rtol, f"grad {name}")


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["constant", "variable", "grouped"])
def test_compiled_triton_kernels_at_model_like_shapes(layout):
    inputs = make_inputs(batch=2, dim=256, length=1000, dstate=16, groups=4, layout=layout, device="cuda")
    compare_with_reference("triton", inputs, 1e-4, delta_softplus=True)
