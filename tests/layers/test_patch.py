import torch

from fusionmamba_triton.layers import FinalPatchExpand, PatchEmbed, PatchExpand, PatchMerging


def test_patch_merging_concatenation_order():
    torch.manual_seed(0)
    merge = PatchMerging(3)
    x = torch.randn(2, 4, 6, 3)
    cat = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
    expected = merge.reduction(merge.norm(cat))
    torch.testing.assert_close(merge(x), expected)
    assert merge(x).shape == (2, 2, 3, 6)


def test_patch_expand_pixel_shuffle_layout():
    torch.manual_seed(0)
    up = PatchExpand(3)  # (B, h, w, 6) -> (B, 2h, 2w, 3)
    x = torch.randn(1, 2, 3, 6)
    e = up.expand(x)  # (1, 2, 3, 12) split as (p1, p2, c)
    out = up(x)
    assert out.shape == (1, 4, 6, 3)
    for p1 in range(2):
        for p2 in range(2):
            block = e[..., (p1 * 2 + p2) * 3:(p1 * 2 + p2 + 1) * 3]
            torch.testing.assert_close(out[:, p1::2, p2::2], up.norm(block))


def test_final_expand_and_embed_shapes():
    embed = PatchEmbed(4, 1, 8)
    assert embed(torch.rand(2, 1, 32, 64)).shape == (2, 8, 16, 8)
    final = FinalPatchExpand(8)
    x = torch.randn(2, 3, 5, 8)
    out = final(x)
    assert out.shape == (2, 12, 20, 2)
    e = final.expand(x)  # 32 channels = (p1=4, p2=4, c=2)
    torch.testing.assert_close(out[:, 1::4, 2::4], final.norm(e[..., (1 * 4 + 2) * 2:(1 * 4 + 2) * 2 + 2]))
