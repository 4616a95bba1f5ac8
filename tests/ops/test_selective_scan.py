"""Selective scan: the fast backends against selective_scan_ref (forward, last state, every gradient)
in fp32, fp16 and bf16, non-contiguous inputs, every kernel config, gradcheck in float64, the custom
op (FLOP count, torch.compile) and input validation.

Backends run on the GPU when there is one, else on the CPU (Triton under the interpreter, so the
shapes are small); see tests/ops/common.py.
"""
import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fusionmamba_triton.ops.backends import interpreter_enabled
from fusionmamba_triton.ops.selective_scan import (
    check_selective_scan_inputs,
    selective_scan,
    selective_scan_op,
    selective_scan_ref,
    selective_scan_torch,
)
from tests.ops.common import DEVICE, HALF_DTYPES, assert_close, backend_param, needs_triton

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
FAST_BACKENDS = [backend_param("torch"), backend_param("triton")]


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


def upcast(inputs):
    return {k: None if v is None else v.detach().float() for k, v in inputs.items()}


def compare_with_reference(backend, inputs, rtol=None, **kwargs):
    """out, last_state and every gradient of `backend` against the fp32 reference on upcast inputs, within
    rtol (default: the input dtype's tolerance)."""
    dtype = inputs["u"].dtype
    ref_out, ref_last, ref_grads = run_with_grads(selective_scan_ref, upcast(inputs), **kwargs)
    out, last, grads = run_with_grads(selective_scan, inputs, backend=backend, **kwargs)
    assert out.dtype == dtype and last.dtype == torch.float32
    assert_close(out, ref_out, dtype, "out", rtol=rtol)
    assert_close(last, ref_last, dtype, "last_state", rtol=rtol)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert grads[name].dtype == inputs[name].dtype, name
        assert_close(grads[name], ref_grads[name], dtype, f"grad {name}", rtol=rtol)


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


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_backend_matches_reference(case, backend):
    overrides, kwargs = CASES[case]
    compare_with_reference(backend, make_inputs(device=DEVICE, **overrides), **kwargs)


@pytest.mark.parametrize("chunk,block_d", [(4, 2), (7, 3), (64, 128)],
                         ids=["chunk4-block2", "chunk7-block3", "one-chunk"])
def test_torch_backend_chunk_and_block_choices(chunk, block_d):
    inputs = make_inputs(dim=6, length=30, groups=3)
    ref_out, ref_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    out, last = selective_scan_torch(**inputs, delta_softplus=True, chunk=chunk, block_d=block_d)
    assert_close(out, ref_out, torch.float32, "out")
    assert_close(last, ref_last, torch.float32, "last_state")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_precision_matches_fp32_reference(dtype, backend):
    if backend == "triton" and DEVICE.type == "cpu":
        pytest.skip("fp16/bf16 Triton runs on CUDA only (test_compiled_triton_kernels_at_model_like_shapes)")
    size = dict(dim=64, length=300, dstate=16, groups=4) if DEVICE.type == "cuda" else dict(dim=8, length=40, groups=2)
    compare_with_reference(backend, make_inputs(dtype=dtype, device=DEVICE, **size), delta_softplus=True)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("layout", ["grouped", "constant"])
def test_non_contiguous_inputs(backend, layout):
    """Permuted and sliced views of every input give the gradients of their contiguous copies."""
    inputs = make_inputs(dim=6, length=21, groups=2, layout=layout, device=DEVICE)
    strided = {}
    for name, t in inputs.items():
        if t is None:
            continue
        if t.dim() == 3:  # (batch, D, L) stored time-major
            strided[name] = t.transpose(1, 2).contiguous().transpose(1, 2)
        elif t.dim() == 4:  # (batch, G, N, L) stored with N last
            strided[name] = t.transpose(2, 3).contiguous().transpose(2, 3)
        elif t.dim() == 2:  # (D, N) stored transposed
            strided[name] = t.t().contiguous().t()
        else:  # (D,) every other element of a longer vector
            strided[name] = torch.stack([t, torch.zeros_like(t)], 1)[:, 0]
        assert not strided[name].is_contiguous() or strided[name].numel() == 1
    expected = run_with_grads(selective_scan, inputs, backend=backend, delta_softplus=True)
    actual = run_with_grads(selective_scan, strided, backend=backend, delta_softplus=True)
    assert_close(actual[0], expected[0], torch.float32, "out", rtol=1e-6)
    assert_close(actual[1], expected[1], torch.float32, "last_state", rtol=1e-6)
    for name, grad in expected[2].items():
        assert_close(actual[2][name], grad, torch.float32, f"grad {name}", rtol=1e-6)


def _configs(kind):
    from fusionmamba_triton.kernels import configs

    table = {"infer": configs.SCAN_FWD_INFER_CONFIGS, "train": configs.SCAN_FWD_TRAIN_CONFIGS,
             "bwd": configs.SCAN_BWD_CONFIGS}[kind]
    return [pytest.param(kind, c, id=f"{kind}-t{c['TILE_DN']}c{c['CHUNK']}w{c['num_warps']}") for c in table]


@needs_triton
@pytest.mark.parametrize("kind,config", _configs("infer") + _configs("train") + _configs("bwd"))
def test_every_kernel_config_matches_reference(kind, config):
    """Each config the autotuner may pick, forced: L = 70 crosses chunk boundaries at every CHUNK <= 64,
    and 9 channels in 3 groups straddle the channel blocks."""
    from fusionmamba_triton.kernels import selective_scan as kernels

    inputs = make_inputs(dim=9, groups=3, length=70, dstate=5, device=DEVICE)
    kwargs = {"delta_softplus": True}
    ref_out, ref_last, ref_grads = run_with_grads(selective_scan_ref, inputs, **kwargs)
    fwd_config = config if kind != "bwd" else None
    out, last, states = kernels.selective_scan_fwd(**inputs, **kwargs, save_states=kind != "infer", config=fwd_config)
    assert_close(out, ref_out, torch.float32, "out")
    assert_close(last, ref_last, torch.float32, "last_state")
    if kind == "infer":
        assert states.numel() == 0
        return
    g = torch.Generator().manual_seed(1)  # the projection run_with_grads uses
    dout = torch.randn(out.shape, generator=g).to(out.device)
    dlast = torch.randn(last.shape, generator=g).to(last.device)
    grads = kernels.selective_scan_bwd(dout, dlast, *inputs.values(), states, True,
                                       config=config if kind == "bwd" else None)
    for name, grad in zip(GRAD_NAMES, grads):
        assert_close(grad, ref_grads[name], torch.float32, f"grad {name}")


@needs_triton
def test_chunk_states_only_when_a_gradient_can_be_asked_for():
    from fusionmamba_triton.kernels.configs import STATE_CHUNK

    inputs = make_inputs(length=70, device=DEVICE)
    args = (*inputs.values(), True, "mamba", "triton")
    with torch.no_grad():
        assert selective_scan_op(*args, False)[2].numel() == 0
    states = selective_scan_op(*args, True)[2]
    assert states.shape == (2, -(-70 // STATE_CHUNK), 6, 4)


@needs_triton
def test_triton_writes_every_output_element(monkeypatch):
    """The launchers' output buffers come NaN-filled: any element the kernels leave unwritten fails.
    Inputs are permuted views: every output is still allocated contiguous (the layout contract)."""
    from fusionmamba_triton.kernels import selective_scan as kernels

    inputs = make_inputs(dim=5, groups=5, length=21, device=DEVICE)
    for name in ("u", "delta", "z"):
        inputs[name] = inputs[name].transpose(1, 2).contiguous().transpose(1, 2)
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(float("nan")))
    out, last, states = kernels.selective_scan_fwd(**inputs, delta_softplus=True)
    grads = kernels.selective_scan_bwd(torch.ones_like(out), torch.ones_like(last), *inputs.values(), states, True)
    for name, t in [("out", out), ("last", last), ("chunk_states", states), *zip(GRAD_NAMES, grads)]:
        assert torch.isfinite(t).all(), f"{name} has unwritten (NaN) elements"
        assert t.is_contiguous(), f"{name} is not contiguous"


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gradients_when_last_state_is_not_used(backend):
    inputs = make_inputs(device=DEVICE)
    grads = {}
    for name, fn, kwargs in (("ref", selective_scan_ref, {}), ("ours", selective_scan, {"backend": backend})):
        leaves = with_grad(inputs)
        fn(**leaves, delta_softplus=True, **kwargs).square().sum().backward()
        grads[name] = {k: v.grad for k, v in leaves.items() if v is not None}
    for key, expected in grads["ref"].items():
        assert_close(grads["ours"][key], expected, torch.float32, f"grad {key}")


def test_zoh_with_zero_A_is_the_mamba_limit():
    inputs = make_inputs(with_z=False)
    inputs["A"][:, 0] = 0.0
    zoh = selective_scan(**inputs, discretization="zoh", backend="torch")
    ref = selective_scan_ref(**inputs, discretization="zoh")
    assert_close(zoh, ref, torch.float32, "out")
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
@pytest.mark.parametrize("layout", ["constant", "variable", "grouped"])
def test_compiled_triton_kernels_at_model_like_shapes(layout):
    inputs = make_inputs(batch=2, dim=256, length=1000, dstate=16, groups=4, layout=layout, device="cuda")
    compare_with_reference("triton", inputs, delta_softplus=True)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_compiled_triton_kernels_in_half_precision(dtype):
    inputs = make_inputs(batch=2, dim=256, length=1000, dstate=16, groups=4, dtype=dtype, device="cuda")
    compare_with_reference("triton", inputs, delta_softplus=True)
