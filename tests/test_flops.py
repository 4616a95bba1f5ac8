"""FLOP counting: FlopCounterMode (with our ops' registered formulas) against a hand count."""
import math

import pytest
import torch

from fusionmamba_triton.flops import count_flops, count_hook_macs
from fusionmamba_triton.model import FusionMamba
from tests.helpers import TINY

N_STATE = 16


def hand_count(cfg: dict, height: int, width: int) -> dict[str, int]:
    """Forward FLOPs (2 per multiply-add) of FusionMamba, batch 1, by component, from the architecture
    (README, "Design notes").

    Every term is per sample times `b`, the samples one module call sees: 2 in the shared encoder
    (both modalities run as one batch), 1 elsewhere. The LDC formula adds 4 * Co * Ci * 9 per call
    for the weight modulation, independent of the batch.
    """
    dims, dims_dec = cfg["dims"], cfg["dims_decoder"]
    sizes = [(math.ceil(height / 4 / 2 ** i), math.ceil(width / 4 / 2 ** i)) for i in range(4)]
    c = dict.fromkeys(["linear", "conv", "depthwise conv", "LDC conv", "SSM projections", "conv1d", "scan",
                       "other matmul"], 0)

    def ssm_core(ch, h, w, b):
        """depthwise conv, ES2D projections and the scan at d_inner = 2C."""
        d, rank, seq = 2 * ch, math.ceil(ch / 16), math.ceil(h / 2) * math.ceil(w / 2)
        c["depthwise conv"] += b * 2 * h * w * d * 9
        c["SSM projections"] += b * (4 * 2 * seq * d * (rank + 2 * N_STATE) + 4 * 2 * seq * rank * d)
        c["scan"] += b * (9 * seq * 4 * d * N_STATE + seq * 4 * d)  # community formula + D skip, no z

    def ldc(ch, t, b):
        c["LDC conv"] += b * 2 * t * ch * ch * 9 + 4 * ch * ch * 9

    def dvss(ch, h, w, b):
        t = h * w
        c["linear"] += b * (2 * t * ch * 4 * ch + 2 * t * 2 * ch * ch)  # in_proj, out_proj
        c["linear"] += b * 2 * (2 * ch * (ch // 8) * 2)  # BiAttn's two Linears on the pooled vector, twice
        c["linear"] += b * 2 * (2 * t * ch * 4 * ch)  # MLP fc1, fc2
        c["conv1d"] += b * 2 * ch * 3  # ECA (BiAttn's spatial mean is a reduction: not counted)
        ldc(ch, t, b)
        ssm_core(ch, h, w, b)

    def dffm(ch, h, w):
        t = h * w
        # in_proj1 (x and z halves), in_proj2 (x half only: its z half is discarded, so not computed), out_proj
        c["linear"] += 2 * t * ch * 4 * ch + 2 * t * ch * 2 * ch + 2 * t * 2 * ch * ch
        c["conv1d"] += 2 * ch * 3  # ECA
        ldc(ch, t, 1)
        ldc(ch, t, 1)
        ssm_core(ch, h, w, 1)
        c["depthwise conv"] += 2 * h * w * 2 * ch * 9  # the shared depthwise conv also runs on the 2nd input

    c["conv"] += 2 * (2 * sizes[0][0] * sizes[0][1] * dims[0] * 16)  # two patch embeddings (4x4, 1 -> C0)
    for i in range(4):  # shared encoder, both modalities in one batch
        for _ in range(cfg["depths"][i]):
            dvss(dims[i], *sizes[i], b=2)
        if i < 3:  # patch merging Linear(4C -> 2C) at the next resolution
            c["linear"] += 2 * 2 * sizes[i + 1][0] * sizes[i + 1][1] * 4 * dims[i] * 2 * dims[i]
    for i in (1, 2, 3):  # Cross_block[0] is skipped in forward (its output is unused)
        dffm(dims[i], *sizes[i])
    for j in range(4):
        stage = 3 - j
        if j:  # patch expand Linear(2d -> 4d) at the coarser resolution
            d = dims_dec[j]
            c["linear"] += 2 * sizes[stage + 1][0] * sizes[stage + 1][1] * 2 * d * 4 * d
        for _ in range(cfg["depths_decoder"][j]):
            dvss(dims_dec[j], *sizes[stage], b=1)
    d = dims_dec[-1]
    c["linear"] += 2 * sizes[0][0] * sizes[0][1] * d * 4 * d  # final expand Linear(d -> 4d)
    c["conv"] += 2 * height * width * (d // 4)  # final 1x1 conv d/4 -> 1
    return c


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return FusionMamba(**TINY, backend="torch").eval()


@pytest.mark.parametrize("size", [(64, 64), (96, 160)], ids=["64x64", "96x160-odd-stages"])
def test_flop_counter_matches_hand_count(tiny_model, size):
    x1, x2 = torch.rand(1, 1, *size), torch.rand(1, 1, *size)
    report = count_flops(tiny_model, x1, x2)
    expected = hand_count(TINY, *size)
    got = report.by_component
    assert got.get("linear", 0) == expected["linear"]
    assert got.get("conv", 0) == expected["conv"]
    assert got.get("depthwise conv", 0) == expected["depthwise conv"]
    assert got.get("SSM projections (x_proj, dt_proj)", 0) == expected["SSM projections"]
    assert got.get("conv1d", 0) == expected["conv1d"]
    # the LDC op may add a small term for the weight modulation (O(Co * Ci * 9) per call)
    assert expected["LDC conv"] <= got["LDC conv"] <= expected["LDC conv"] * 1.02
    assert got["selective scan"] == expected["scan"]
    assert got.get("attention / other matmul", 0) == expected["other matmul"]
    assert report.total_flops == sum(got.values()) == sum(expected.values())  # nothing left uncounted


def test_count_inside_frozen_is_the_plain_count(tiny_model):
    x1, x2 = torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64)
    expected = count_flops(tiny_model, x1, x2)
    with torch.inference_mode(), tiny_model.frozen():
        tiny_model(x1, x2)  # fills the caches: packed oneDNN weights on a CPU
        got = count_flops(tiny_model, x1, x2)
        assert any(m.frozen_cache for m in tiny_model.modules() if hasattr(m, "frozen_cache"))  # kept
    assert got.by_component == expected.by_component and got.total_flops == expected.total_flops


def test_hook_counter_misses_ldc_and_scan(tiny_model):
    x1, x2 = torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64)
    report = count_flops(tiny_model, x1, x2)
    hooks = count_hook_macs(tiny_model, x1, x2)
    comp = report.by_component
    seen_by_hooks = comp["linear"] + comp["conv"] + comp["depthwise conv"]
    assert report.hook_visible_flops == seen_by_hooks
    assert 0 < 2 * hooks["total"] <= seen_by_hooks  # never more than the modules' own matmuls/convs
    assert 2 * hooks["total"] + comp["LDC conv"] + comp.get("selective scan", 0) <= report.total_flops
    assert report.total_flops - 2 * hooks["total"] >= comp["LDC conv"] + comp.get("selective scan", 0)


def test_count_flops_reports_macs_as_half():
    lin = torch.nn.Linear(8, 4, bias=False)
    report = count_flops(lin, torch.rand(3, 8))
    assert report.total_flops == 2 * 3 * 8 * 4
    assert report.total_macs == 3 * 8 * 4
    assert report.by_component == {"linear": 2 * 3 * 8 * 4}
    assert count_hook_macs(lin, torch.rand(3, 8))["linear"] == 3 * 8 * 4
