"""FusionMamba losses: presets, hand-made cases, gradients, and SSIM / MS-SSIM against references."""
import pytest
import torch
import torch.nn.functional as F

from fusionmamba_triton.losses import PRESETS, FusionLoss, intensity_loss, sobel_magnitude, texture_loss
from fusionmamba_triton.metrics.ssim_torch import ms_ssim, ms_ssim_window_sizes, ssim


def images(shape=(2, 1, 40, 52), seed=0, device="cpu", dtype=torch.float32):
    """Two smooth random sources in [0, 1] and their average: (B, 1, H, W) each."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        x = F.avg_pool2d(torch.rand(shape, generator=g, dtype=torch.float64), 5, stride=1, padding=2)
        x = (x - x.amin()) / (x.amax() - x.amin())
        out.append(x.to(device, dtype))
    return out[0], out[1], 0.5 * (out[0] + out[1])


def test_presets_and_validation():
    assert set(PRESETS) == {"paper", "official"}
    assert PRESETS["paper"] == {"intensity": 1.0, "texture": 1.0, "ssim": 10.0}
    assert PRESETS["official"] == {"intensity": 10.0, "texture": 1.0, "ssim": 10.0}
    with pytest.raises(ValueError, match="preset"):
        FusionLoss("tang")
    loss = FusionLoss()
    assert loss.preset == "official"  # the authors' training code, like the CLI's --loss default
    a, b, f = images()
    with pytest.raises(ValueError, match="img2 must have shape"):
        loss(f, a, b[:, 0])
    with pytest.raises(ValueError, match="same shape"):
        loss(f, a, b[..., :-1])
    with pytest.raises(ValueError, match="floating"):
        loss(f, a, (b * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="at least 11x11"):
        loss(f[..., :10, :10], a[..., :10, :10], b[..., :10, :10])


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_total_is_the_weighted_sum(preset):
    a, b, f = images(shape=(2, 1, 64, 48))
    total, terms = FusionLoss(preset)(f, a, b)
    assert set(terms) == {"intensity", "texture", "ssim"}
    assert all(not t.requires_grad for t in terms.values())
    expected = sum(PRESETS[preset][k] * v for k, v in terms.items())
    assert torch.allclose(total, expected, rtol=1e-6)


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_identical_images_give_zero_loss(preset):
    a, _, _ = images(shape=(1, 1, 64, 64))
    total, terms = FusionLoss(preset)(a, a, a)
    assert terms["ssim"].abs().item() < 1e-6
    assert terms["intensity"].item() == 0.0 and terms["texture"].item() == 0.0
    assert total.abs().item() < 1e-5


def test_fused_equal_to_max_gives_zero_intensity_loss():
    a, b, _ = images()
    target = torch.maximum(a, b)
    assert intensity_loss(target, a, b).item() == 0.0
    assert intensity_loss(target, a, b, squared=True).item() == 0.0
    assert intensity_loss(target + 0.1, a, b).item() == pytest.approx(0.1, rel=1e-5)
    assert intensity_loss(target + 0.1, a, b, squared=True).item() == pytest.approx(0.01, rel=1e-4)


def test_sobel_magnitude_on_a_ramp():
    x = torch.arange(7, dtype=torch.float64).repeat(5, 1)[None, None]  # x(i, j) = j
    mag = sobel_magnitude(x)
    assert torch.equal(mag[0, 0, 1:-1, 1:-1], torch.full((3, 5), 8.0, dtype=torch.float64))  # |Sx| = 8, Sy = 0
    assert texture_loss(x, x, 0.5 * x).item() == 0.0


@pytest.mark.parametrize("preset", ["paper", "official"])
@pytest.mark.parametrize("size", [(128, 128), (97, 130)], ids=["128", "97x130"])
def test_gradients_are_finite(preset, size):
    a, b, _ = images(shape=(1, 1, *size), seed=1)
    fused = (0.3 * a + 0.3 * b + 0.2).requires_grad_()
    total, _ = FusionLoss(preset)(fused, a, b)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(fused.grad).all()
    assert fused.grad.abs().sum() > 0


def test_gradients_finite_when_fused_equals_a_source():
    a, b, _ = images(shape=(1, 1, 64, 64), seed=2)
    fused = a.clone().requires_grad_()
    total, _ = FusionLoss("official")(fused, a, b)
    total.backward()
    assert torch.isfinite(fused.grad).all()


def test_small_images_official_ms_ssim_window():
    assert ms_ssim_window_sizes(256, 256) == [11] * 5
    assert ms_ssim_window_sizes(128, 128, adapt_window=True) == [11, 11, 11, 11, 7]
    assert ms_ssim_window_sizes(161, 300, adapt_window=True) == [11] * 5
    with pytest.raises(ValueError, match="exceeds 160 px"):
        ms_ssim_window_sizes(128, 128)
    with pytest.raises(ValueError, match="at least 33 px"):
        ms_ssim_window_sizes(32, 64, adapt_window=True)
    a, b, f = images(shape=(1, 1, 32, 64))
    FusionLoss("paper")(f, a, b)  # SSIM only needs 11 px
    with pytest.raises(ValueError, match="33 px"):
        FusionLoss("official")(f, a, b)


def test_ssim_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    a, b, _ = images(shape=(1, 1, 37, 45), dtype=torch.float64)
    expected = metrics.structural_similarity(
        a[0, 0].numpy(), b[0, 0].numpy(), data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(a, b, 1.0).item() == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("size", [(161, 170), (175, 203)], ids=["161x170", "175x203-odd"])
def test_ms_ssim_matches_pytorch_msssim(size):
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    a, b, _ = images(shape=(2, 1, *size), dtype=torch.float64)
    expected = pytorch_msssim.ms_ssim(a, b, data_range=1.0, size_average=False)
    got = ms_ssim(a, b, 1.0)[:, 0]
    assert torch.allclose(got, expected, atol=1e-5)  # pytorch_msssim's window is float32
    # the adaptive window changes nothing once the image is large enough
    assert torch.equal(ms_ssim(a, b, 1.0, adapt_window=True), ms_ssim(a, b, 1.0))


def test_ms_ssim_of_identical_images_is_one():
    a, _, _ = images(shape=(1, 1, 170, 170), dtype=torch.float64)
    assert ms_ssim(a, a, 1.0).item() == pytest.approx(1.0, abs=1e-12)


def test_half_precision_inputs_are_scored_in_float32():
    a, b, f = images(shape=(1, 1, 64, 64))
    total32, _ = FusionLoss("official")(f, a, b)
    total16, terms = FusionLoss("official")(f.bfloat16(), a.bfloat16(), b.bfloat16())
    assert torch.isfinite(total16)
    assert terms["ssim"].dtype == torch.float32
    assert total16.float().item() == pytest.approx(total32.item(), rel=2e-2)


@pytest.mark.cuda
@pytest.mark.parametrize("preset", ["paper", "official"])
def test_cuda_matches_cpu(preset):
    a, b, _ = images(shape=(2, 1, 128, 96), seed=3)
    fused = 0.4 * a + 0.5 * b
    cpu_total, _ = FusionLoss(preset)(fused, a, b)
    fused_cuda = fused.cuda().requires_grad_()
    total, _ = FusionLoss(preset)(fused_cuda, a.cuda(), b.cuda())
    total.backward()
    assert torch.isfinite(fused_cuda.grad).all()
    assert total.item() == pytest.approx(cpu_total.item(), rel=1e-4)


def test_loss_weights_replace_the_presets_weights_of_those_terms():
    torch.manual_seed(0)
    a, b, f = (torch.rand(2, 1, 32, 32) for _ in range(3))
    base_total, terms = FusionLoss("paper")(f, a, b)
    total, _ = FusionLoss("paper", weights={"int": 3.0})(f, a, b)
    assert torch.allclose(total, base_total + 2.0 * terms["intensity"])
    assert FusionLoss("paper", weights={"ssim": 5}, without=("text",)).weights == {"intensity": 1.0, "ssim": 5.0}
    with pytest.raises(ValueError, match="unknown loss term"):
        FusionLoss("paper", weights={"grad": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        FusionLoss("paper", weights={"int": -1.0})


def test_vif_term_is_optional_and_is_the_metrics_vif():
    from fusionmamba_triton.metrics.core import vif as vif_metric

    a, b, f = images(shape=(2, 1, 64, 72), seed=3)
    total, terms = FusionLoss("paper")(f, a, b)
    assert "vif" not in terms  # off in both presets, not computed
    assert FusionLoss("paper", weights={"vif": 0}).weights == PRESETS["paper"]
    loss = FusionLoss("paper", weights={"vif": 2.0})
    total_vif, terms_vif = loss(f, a, b)
    assert torch.allclose(total_vif, total + 2.0 * terms_vif["vif"], rtol=1e-6)
    per_image = [vif_metric(a[i, 0].double().numpy() * 255, b[i, 0].double().numpy() * 255,
                            f[i, 0].double().numpy() * 255) for i in range(2)]
    assert terms_vif["vif"].item() == pytest.approx(2.0 - sum(per_image) / 2, abs=1e-5)
    with pytest.raises(ValueError, match="unknown loss term"):
        FusionLoss("paper", without=("vif",))  # only the paper's terms can be left out


def test_vif_term_gradients_are_finite_with_flat_and_equal_regions():
    a, b, _ = images(shape=(1, 1, 48, 48), seed=4)
    a = a.clone()
    a[..., :20, :] = 0.5  # flat in a reference: VIFp's special cases
    for fused in (a.clone(), torch.full_like(a, 0.3), 0.5 * (a + b)):
        fused.requires_grad_()
        total, _ = FusionLoss("paper", weights={"vif": 1.0})(fused, a, b)
        total.backward()
        assert torch.isfinite(fused.grad).all()
