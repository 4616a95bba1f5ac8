"""FusionMamba: checkpoint compatibility, parity with the official model, gradients, weights IO."""
import json
import os

import pytest
import torch

from fusionmamba_triton.layers import CMFM, LDC, SS2D
from fusionmamba_triton.layers.common import Linear
from fusionmamba_triton.model import PRESETS, FusionMamba, infer_config
from tests.helpers import TINY

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="module")
def parity():
    return torch.load(os.path.join(FIXTURES, "official_parity_small.pt"), weights_only=True)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return FusionMamba(**{**TINY, **overrides})


def image_pair(h=64, w=64, batch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, h, w, generator=g), torch.rand(batch, 1, h, w, generator=g)


# ---------------------------------------------------------------- checkpoint layout
@pytest.mark.parametrize("preset, manifest", [("base", "official_state_dict_default.json"),
                                              ("tiny", "official_state_dict_tiny.json")])
def test_state_dict_matches_official_keys_shapes_and_order(preset, manifest):
    with open(os.path.join(FIXTURES, manifest)) as f:
        official = json.load(f)
    with torch.device("meta"):
        model = FusionMamba.from_preset(preset)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == official
    assert list(ours) == list(official)


def test_ldc_base_mask_is_frozen_and_centre_not_saved():
    model = tiny_model()
    ldc = model.layers[0].blocks[0].conv_branch
    assert not ldc.base_mask.requires_grad
    assert [name for name, _ in ldc.named_parameters()][:2] == ["base_mask", "learnable_mask"]
    assert not any("center" in k or "centre" in k for k in model.state_dict())


# ---------------------------------------------------------------- parity with the official model
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_parity_with_official_output(parity, backend):
    model = FusionMamba(**parity["config"], backend=backend)
    model.load_state_dict(parity["state_dict"], strict=True)
    model.eval()
    with torch.no_grad():
        y = model(parity["x1"], parity["x2"])
    assert y.shape == parity["y"].shape
    torch.testing.assert_close(y, parity["y"], atol=1e-4, rtol=0)


@pytest.mark.interpreter
def test_parity_with_official_output_triton(parity):
    """The triton backend on the same fixture: minutes under the CPU interpreter, so opt-in
    (python -m pytest -m interpreter); the kernels themselves are tested op by op in tests/ops."""
    pytest.importorskip("triton")
    model = FusionMamba(**parity["config"], backend="triton")
    model.load_state_dict(parity["state_dict"], strict=True)
    model.eval()
    with torch.no_grad():
        y = model(parity["x1"], parity["x2"])
    torch.testing.assert_close(y, parity["y"], atol=1e-4, rtol=0)


def test_odd_stage_sizes_torch_matches_reference():
    """96 x 160 gives stage maps 24x40, 12x20, 6x10, 3x5: the ES2D padding is exercised."""
    model = tiny_model().eval()
    x1, x2 = image_pair(96, 160, batch=2)
    with torch.no_grad():
        y_torch = model.set_backend("torch")(x1, x2)
        y_ref = model.set_backend("reference")(x1, x2)
    assert y_torch.shape == (2, 1, 96, 160)
    torch.testing.assert_close(y_torch, y_ref, atol=1e-4, rtol=1e-4)


def test_batch_items_are_independent():
    model = tiny_model().eval()
    x1, x2 = image_pair(64, 32, batch=2)
    with torch.no_grad():
        both = model(x1, x2)
        second = model(x1[1:], x2[1:])
    torch.testing.assert_close(both[1:], second, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_frozen_model_gives_the_same_outputs_and_builds_each_ldc_weight_once(backend, precision):
    """Frozen, the CPU matrix products run through oneDNN with packed weights (the same numbers up to summation
    order: fp32 outputs to about 1e-5; bf16 ones as close to fp32 as without frozen) and each LDC builds its
    modulated weight once."""
    model = tiny_model(backend=backend).eval()
    with torch.no_grad():  # a trained-looking LDC: the modulation changes the centre tap
        for module in model.modules():
            if isinstance(module, LDC):
                module.learnable_mask.uniform_(0.5, 1.5)
    x1, x2 = image_pair(64, 96)
    ldcs = [m for m in model.modules() if isinstance(m, LDC)]
    unused_ldcs = [m for m in model.Cross_block[0].modules() if isinstance(m, LDC)]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    onednn = torch.backends.mkldnn.is_available() and (
        precision == "fp32" or torch.ops.mkldnn._is_mkldnn_bf16_supported())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        expected = model(x1, x2)
        with model.frozen():
            first = model(x1, x2)
            weights = [dict(m.frozen_cache) for m in ldcs]
            # one W' (packed for oneDNN or not) per LDC that ran (Cross_block[0] never runs: the official decoder
            # skips it)
            assert sorted(len(w) for w in weights) == [0] * len(unused_ldcs) + [1] * (len(ldcs) - len(unused_ldcs))
            with model.frozen():  # nested: the outer block's weights are kept
                second = model(x1, x2)
            assert all(m.frozen_cache[k] is w[k] for m, w in zip(ldcs, weights) for k in w)
            linear_keys = {k for m in model.modules() if isinstance(m, Linear) for k in m.frozen_cache}
            if onednn:  # packed for oneDNN, with the bias in the product's dtype
                assert linear_keys == {("onednn", "weight", dtype)}
            else:  # matrix-product weights are kept cast only under autocast
                assert linear_keys == ({("weight", dtype), ("weight_bias", dtype)} if precision == "bf16" else set())
    assert all(m.frozen_cache is None for m in model.modules() if hasattr(m, "frozen_cache"))
    if precision == "fp32":
        torch.testing.assert_close(first, expected, rtol=0, atol=1e-4)
    else:  # frozen, SiLU / GELU see the fp32 sums of the products, not their bf16 roundings: as close to fp32
        with torch.inference_mode():
            exact = model(x1, x2)
        unfrozen_error = (expected.float() - exact).abs().mean()
        assert (first.float() - exact).abs().mean() <= 1.25 * unfrozen_error + 1e-4
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_frozen_model_still_trains_with_autograd_on():
    """With gradients enabled the frozen cache is bypassed: LDC weights get their gradients."""
    model = tiny_model().train()
    x1, x2 = image_pair(64, 64)
    with model.frozen():
        model(x1, x2).mean().backward()
        assert all(m.frozen_cache == {} for m in model.modules() if isinstance(m, LDC))
    ldc = next(m for m in model.modules() if isinstance(m, LDC))
    assert ldc.conv.weight.grad is not None and ldc.learnable_mask.grad is not None


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("use_checkpoint", [False, True], ids=["plain", "checkpointed"])
def test_gradients_reach_every_trained_parameter(use_checkpoint):
    model = tiny_model(drop_path_rate=0.0, use_checkpoint=use_checkpoint, backend="torch").train()
    x1, x2 = image_pair(64, 128)  # the coarsest scan has L' = 2 > 1 steps, so A gets a gradient
    model(x1, x2).square().mean().backward()
    # Parameters the official model never trains: its output does not depend on Cross_block.0
    # (the finest skip is dropped) nor on Diff_enhance.lastconv (built but unused).
    unused = ("Cross_block.0.", "Diff_enhance.lastconv.")
    for name, p in model.named_parameters():
        if name.endswith("base_mask"):
            assert p.grad is None, name
        elif any(tag in name for tag in unused):
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_checkpointing_gives_the_same_gradients():
    grads = []
    for use_checkpoint in (False, True):
        model = tiny_model(drop_path_rate=0.0, use_checkpoint=use_checkpoint).train()
        x1, x2 = image_pair(32, 32)
        model(x1, x2).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-4, rtol=1e-3, msg=lambda m: f"{name}: {m}")


def test_drop_path_is_random_in_training_only():
    model = tiny_model(drop_path_rate=0.5)
    x1, x2 = image_pair(32, 32, batch=4)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x1, x2), model(x1, x2))
        model.train()
        torch.manual_seed(0)
        a = model(x1, x2)
        torch.manual_seed(1)
        b = model(x1, x2)
    assert not torch.allclose(a, b)


# ---------------------------------------------------------------- presets, config, backend
def test_presets():
    assert set(PRESETS) >= {"base", "tiny", "small"}
    with torch.device("meta"):
        small = FusionMamba.from_preset("small", d_state=8)
    assert small.config["dims"] == [16, 32, 64, 128] and small.config["dims_decoder"] == [128, 64, 32, 16]
    assert small.config["depths"] == [1, 1, 1, 1] and small.config["depths_decoder"] == [1, 1, 1, 1]
    assert small.config["d_state"] == 8
    assert "d_state" not in PRESETS["small"]  # overrides do not leak into the registry
    with pytest.raises(ValueError, match="unknown preset"):
        FusionMamba.from_preset("huge")


def test_config_rebuilds_the_model():
    model = tiny_model(cmfm_gate="paper")
    config = model.config
    assert "backend" not in config
    config["dims"].append(1)  # a copy: the model's config is unchanged
    assert FusionMamba(**model.config).config == model.config


def test_invalid_constructor_arguments():
    with pytest.raises(ValueError, match="dims_decoder"):
        FusionMamba(**{**TINY, "dims_decoder": [8, 16, 32, 64]})
    with pytest.raises(ValueError, match="doubles"):
        FusionMamba(**{**TINY, "dims": [8, 16, 24, 64]})
    with pytest.raises(ValueError, match="backend"):
        FusionMamba(**TINY, backend="cuda")
    with pytest.raises(ValueError, match="gate"):
        FusionMamba(**TINY, cmfm_gate="symmetric")


def test_set_backend_switches_every_op_module():
    model = tiny_model()
    assert model.set_backend("reference") is model
    op_modules = [m for m in model.modules() if isinstance(m, (SS2D, CMFM, LDC))]
    assert len(op_modules) == 2 * (4 + 4) + 3 * 4  # ESSM + LDC per DVSS block, CMFM + 2 LDCs per DFFM
    assert all(m.backend == "reference" for m in op_modules)
    with pytest.raises(ValueError, match="backend must be one of"):
        model.set_backend("gpu")
    assert all(m.backend == "reference" for m in op_modules)


def test_paper_gate_changes_the_output_but_not_the_keys():
    official = tiny_model(cmfm_gate="official").eval()
    paper = tiny_model(cmfm_gate="paper").eval()
    paper.load_state_dict(official.state_dict())
    x1, x2 = image_pair(32, 32)
    with torch.no_grad():
        assert not torch.allclose(official(x1, x2), paper(x1, x2))


@pytest.mark.parametrize("shape1, shape2, match", [
    ((1, 1, 48, 64), (1, 1, 48, 64), "multiples of 32"),
    ((1, 3, 64, 64), (1, 3, 64, 64), r"\(B, 1, H, W\)"),
    ((1, 64, 64), (1, 64, 64), r"\(B, 1, H, W\)"),
    ((1, 1, 64, 64), (1, 1, 64, 32), "same shape"),
    ((2, 1, 64, 64), (1, 1, 64, 64), "same shape"),
], ids=["h48", "rgb", "3d", "w_mismatch", "batch_mismatch"])
def test_forward_rejects_bad_inputs(shape1, shape2, match):
    model = tiny_model()
    with pytest.raises(ValueError, match=match):
        model(torch.rand(shape1), torch.rand(shape2))


def test_forward_rejects_integer_images():
    model = tiny_model()
    x = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    with pytest.raises(TypeError, match="floating"):
        model(x, x)


# ---------------------------------------------------------------- weights IO
def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_pretrained_round_trip(tmp_path):
    model = tiny_model(cmfm_gate="paper")
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["config.json", "model.safetensors"]
    loaded = FusionMamba.from_pretrained(tmp_path / "ckpt", backend="reference")
    assert loaded.config == model.config and not loaded.training
    assert loaded.backend == "reference"
    assert _same_weights(model, loaded)
    also = FusionMamba.from_pretrained(str(tmp_path / "ckpt" / "model.safetensors"))  # config inferred
    assert _same_weights(model, also) and also.config["cmfm_gate"] == "official"


def test_from_pretrained_official_pth_with_dataparallel_prefix(tmp_path, parity):
    wrapped = {"model": {"module." + k: v for k, v in parity["state_dict"].items()}, "epoch": 2}
    path = tmp_path / "fusion_model.pth"
    torch.save(wrapped, path)
    model = FusionMamba.from_pretrained(path)
    assert model.config["dims"] == parity["config"]["dims"]
    assert model.config["depths"] == parity["config"]["depths"]
    with torch.no_grad():
        y = model(parity["x1"], parity["x2"])
    torch.testing.assert_close(y, parity["y"], atol=1e-4, rtol=0)


def test_from_pretrained_state_dict_with_preset_and_overrides():
    source = FusionMamba.from_preset("small", depths=[1, 1, 1, 1])
    model = FusionMamba.from_pretrained({"state_dict": source.state_dict()}, preset="small", drop_path_rate=0.0)
    assert model.config["drop_path_rate"] == 0.0 and _same_weights(source, model)


def test_infer_config_from_official_shapes(parity):
    config = infer_config(parity["state_dict"])
    for key, value in parity["config"].items():
        assert config[key] == value


def test_wrong_shape_checkpoint_gives_clear_error(tmp_path, parity):
    state = dict(parity["state_dict"])
    state["final_conv.weight"] = torch.zeros(1, 4, 1, 1)
    del state["layers.0.blocks.0.op.Ds"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        FusionMamba.from_pretrained(path)
    message = str(info.value)
    assert str(path) in message
    assert "layers.0.blocks.0.op.Ds" in message and "extra.weight" in message
    assert "final_conv.weight: checkpoint (1, 4, 1, 1) vs model (1, 2, 1, 1)" in message


def test_preset_mismatch_is_reported(parity):
    with pytest.raises(ValueError, match=r"\d+ shape mismatches: patch_embed1.proj.weight: checkpoint \(8, 1, 4, 4\)"):
        FusionMamba.from_pretrained(parity["state_dict"], preset="small")
    with pytest.raises(ValueError, match="missing keys: layers.2.blocks.1.norm.weight"):
        FusionMamba.from_pretrained(parity["state_dict"], depths=[1, 1, 2, 1])


def test_unknown_name_and_unreadable_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no bundled checkpoint named 'nope'"):
        FusionMamba.from_pretrained("nope")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read checkpoint"):
        FusionMamba.from_pretrained(bad)


def test_forward_on_the_meta_device_for_cost_counting():
    """benchmarks/flops_runtime.py counts FLOPs on meta tensors: the fp32 head must not need autocast there."""
    model = FusionMamba(**TINY).to("meta")
    x = torch.empty(1, 1, 64, 96, device="meta")
    assert model(x, x).shape == (1, 1, 64, 96)
