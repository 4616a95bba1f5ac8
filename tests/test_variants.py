"""The paper's structure ablations (Table 7) as FusionMamba variants: they build from every preset,
train at odd stage sizes, have exactly the parameters they should, and round-trip through
save_pretrained / from_pretrained."""
import pytest
import torch

from fusionmamba_triton.layers import (VARIANT_NAMES, DFFM, DVSSBlock, EVSSBlock, TransformerBlock, get_variant,
                                       infer_variant)
from fusionmamba_triton.layers.transformer import num_heads_for
from fusionmamba_triton.model import PRESETS, FusionMamba
from tests.helpers import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

# Parameters the official wiring never uses, in every variant: the finest fused skip (Cross_block.0)
# is dropped by the decoder, and DFEM's Diff_enhance.lastconv is built but not called.
UNUSED = ("Cross_block.0.", "Diff_enhance.lastconv.")


def tiny(variant, seed=0, **overrides):
    torch.manual_seed(seed)
    return FusionMamba(**{**TINY, "drop_path_rate": 0.0, **overrides}, variant=variant)


def image_pair(h, w, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, h, w, generator=g), torch.rand(batch, 1, h, w, generator=g)


def keys(model, prefix=""):
    return [k for k in model.state_dict() if k.startswith(prefix)]


@pytest.fixture(scope="module")
def full_keys():
    return keys(tiny(None))


# ---------------------------------------------------------------- building
@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_builds_from_every_preset(variant, preset):
    with torch.device("meta"):
        model = FusionMamba.from_preset(preset, variant=variant)
    assert model.config["variant"] == variant
    assert model.config["dims"] == PRESETS[preset]["dims"]
    assert infer_variant(model.state_dict()) == variant
    stage = get_variant(variant).stage_block
    assert all(type(b) is stage for layer in (*model.layers, *model.layers_up) for b in layer.blocks)
    assert len(model.layers[2].blocks) == PRESETS[preset]["depths"][2]


def test_full_model_is_the_default():
    default, explicit = tiny(None), FusionMamba(**{**TINY, "drop_path_rate": 0.0})
    assert default.config["variant"] is None and infer_variant(default.state_dict()) is None
    assert keys(default) == keys(explicit)
    assert all(isinstance(c, DFFM) for c in default.Cross_block)
    assert all(type(b) is DVSSBlock for layer in default.layers for b in layer.blocks)


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="unknown variant 'no_dvss'; choose one of dvss_to_evss"):
        FusionMamba(**TINY, variant="no_dvss")


# ---------------------------------------------------------------- forward and backward
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_forward_backward_at_odd_stage_sizes(variant):
    """96 x 160 gives stage maps 24x40, 12x20, 6x10, 3x5; every trained parameter gets a gradient."""
    model = tiny(variant, backend="torch").train()
    x1, x2 = image_pair(96, 160)
    y = model(x1, x2)
    assert y.shape == (2, 1, 96, 160) and torch.isfinite(y).all()
    y.square().mean().backward()
    trained = 0
    for name, p in model.named_parameters():
        if not p.requires_grad or any(tag in name for tag in UNUSED):
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
            trained += 1
    assert trained > 0


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_batch_items_are_independent_in_eval(variant):
    model = tiny(variant).eval()
    x1, x2 = image_pair(64, 96)
    with torch.no_grad():
        both, second = model(x1, x2), model(x1[1:], x2[1:])
    torch.testing.assert_close(both[1:], second, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["dvss_to_evss", "no_dfem"])
def test_torch_backend_matches_reference(variant):
    """Variants that keep a state-space op run it through the same backends."""
    model = tiny(variant).eval()
    x1, x2 = image_pair(96, 64, batch=1)
    with torch.no_grad():
        y_torch = model.set_backend("torch")(x1, x2)
        y_ref = model.set_backend("reference")(x1, x2)
    torch.testing.assert_close(y_torch, y_ref, atol=1e-4, rtol=1e-4)


def test_variants_change_the_output():
    x1, x2 = image_pair(64, 64, batch=1)
    outputs = {}
    with torch.no_grad():
        for variant in (None,) + VARIANT_NAMES:
            outputs[variant] = tiny(variant).eval()(x1, x2)
    for variant in VARIANT_NAMES:
        assert not torch.allclose(outputs[variant], outputs[None], atol=1e-3), variant


# ---------------------------------------------------------------- the parameters each variant has
def _split(names):
    stages = [k for k in names if k.startswith(("layers.", "layers_up."))]
    fusion = [k for k in names if k.startswith("Cross_block.")]
    rest = [k for k in names if k not in stages and k not in fusion]
    return stages, fusion, rest


@pytest.mark.parametrize("variant", ["dvss_to_evss", "dvss_to_transformer"])
def test_stage_variants_replace_only_the_stage_blocks(variant, full_keys):
    model = tiny(variant)
    stages, fusion, rest = _split(keys(model))
    full_stages, full_fusion, full_rest = _split(full_keys)
    assert fusion == full_fusion and rest == full_rest
    block_keys = {k.split(".blocks.0.", 1)[1] for k in stages if k.startswith("layers.1.blocks.0.")}
    # no DVSS-only parts: ECA, LDC
    assert not any(k.startswith(("self_attention_cross_channel.", "conv_branch.learnable", "conv_branch.conv."))
                   for k in block_keys)
    if variant == "dvss_to_evss":
        assert {"op.A_logs", "conv_branch.0.weight", "conv_branch.1.running_mean", "conv_branch.3.weight",
                "se.global_reduce.weight", "mlp.fc1.weight"} <= block_keys
        assert model.layers[1].blocks[0].conv_branch[0].weight.shape == (16, 1, 3, 3)  # depthwise 3x3
    else:
        assert not any(".op." in k for k in stages)  # no state-space op left in the stages
        assert {"pos.weight", "attn.qkv.weight", "attn.proj.weight", "norm.weight", "mlp.fc2.weight"} <= block_keys
        assert model.layers[1].blocks[0].attn.qkv.weight.shape == (48, 16)  # same width (16) as DVSS there
    # the downsample / upsample layers between blocks are untouched
    assert [k for k in stages if "sample" in k] == [k for k in full_stages if "sample" in k]


def test_dffm_to_dvss_puts_a_dvss_block_in_each_fusion_slot(full_keys):
    model = tiny("dffm_to_dvss")
    stages, fusion, rest = _split(keys(model))
    full_stages, _, full_rest = _split(full_keys)
    assert stages == full_stages and rest == full_rest
    reference = [f"Cross_block.2.{k}" for k in DVSSBlock(32).state_dict()]
    assert [k for k in fusion if k.startswith("Cross_block.2.")] == reference
    assert not any("Cross_layer" in k or "self_attention_cross." in k for k in fusion)


@pytest.mark.parametrize("variant, removed", [
    ("no_dfem", (".Cross_layer.",)),
    ("no_cmfm", (".self_attention_cross.", ".self_attention_cross_spatial.", ".ln_1.", ".ln_2.")),
], ids=["no_dfem", "no_cmfm"])
def test_removal_variants_have_the_full_keys_minus_the_module(variant, removed, full_keys):
    names = keys(tiny(variant))
    expected = [k for k in full_keys if not (k.startswith("Cross_block.") and any(r in k for r in removed))]
    assert names == expected  # same order, same names: nothing added
    assert len(names) < len(full_keys)
    full_state = tiny(None).state_dict()
    for k, v in tiny(variant).state_dict().items():
        assert v.shape == full_state[k].shape, k


def test_no_cmfm_has_no_state_space_op_in_the_fusion():
    model = tiny("no_cmfm")
    assert not any(k.startswith("Cross_block.") and "A_logs" in k for k in keys(model))
    fusion = keys(model, "Cross_block.1.")
    assert fusion and all(k.startswith("Cross_block.1.Cross_layer.") for k in fusion)


def test_num_heads_divide_the_width():
    assert [num_heads_for(d) for d in (8, 16, 96, 192, 384, 768, 100)] == [1, 1, 3, 6, 12, 24, 2]
    assert isinstance(tiny("dvss_to_transformer").layers_up[3].blocks[0], TransformerBlock)
    assert isinstance(tiny("dvss_to_evss").layers[0].blocks[0], EVSSBlock)


# ---------------------------------------------------------------- weights IO
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_save_pretrained_round_trip(variant, tmp_path):
    model = tiny(variant)
    with torch.no_grad():  # move the BatchNorm running stats of EVSS off their init so they are checked too
        model.train()(*image_pair(32, 32))
    model.eval()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = FusionMamba.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config and loaded.config["variant"] == variant
    rebuilt = FusionMamba(**model.config)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    from_tensors = FusionMamba.from_pretrained(tmp_path / "ckpt" / "model.safetensors")  # variant read off the keys
    assert from_tensors.config["variant"] == variant
    x1, x2 = image_pair(64, 32, batch=1)
    with torch.no_grad():
        y = model(x1, x2)
        for other in (loaded, rebuilt.eval(), from_tensors):
            torch.testing.assert_close(other(x1, x2), y, atol=0, rtol=0)


def test_from_pretrained_with_a_preset_keeps_the_variant(tmp_path):
    torch.manual_seed(0)
    source = FusionMamba.from_preset("small", variant="no_cmfm")
    model = FusionMamba.from_pretrained({"model": source.state_dict()}, preset="small")
    assert model.config["variant"] == "no_cmfm"


def test_loading_into_the_wrong_variant_names_the_keys():
    state = tiny("no_cmfm").state_dict()
    with pytest.raises(ValueError, match=r"variant=no_dfem\).*missing keys: Cross_block.0.ln_1.weight"):
        FusionMamba.from_pretrained(state, variant="no_dfem")
