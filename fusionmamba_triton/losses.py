"""FusionMamba training losses: intensity, Sobel texture and SSIM / MS-SSIM terms.

Two presets, all images (B, 1, H, W) in [0, 1]:

* "paper" (Eq. 9-12): 1 * L_int + 1 * L_text + 10 * L_ssim with
  L_int  = mean |I_f - max(I_1, I_2)|                       (the L1 norm / HW, averaged over the batch)
  L_text = mean | |grad I_f| - max(|grad I_1|, |grad I_2|) |
  L_ssim = 1/2 (1 - SSIM(I_1, I_f)) + 1/2 (1 - SSIM(I_2, I_f)), Wang SSIM (Gaussian 11/1.5, L = 1).
* "official" (the default; the authors' training code): 10 * L_ssim + 10 * L_int + 1 * L_text with
  L_int  = mean (I_f - max(I_1, I_2))^2
  L_ssim = 1/2 (1 - MS-SSIM(I_1, I_f)) + 1/2 (1 - MS-SSIM(I_2, I_f)), a correct 5-scale MS-SSIM
  (the bundled official version multiplies the last-scale SSIM in four times).

|grad x| = |Sobel_x * x| + |Sobel_y * x| with zero padding in both presets (the paper only says
"Sobel"). Small images: the 5-scale MS-SSIM needs a short side above 160 px for its 11-tap window;
below that the window is cut at the coarse scales to the largest odd size that fits (e.g. 11, 11,
11, 11, 7 for 128 px crops), and images with a short side under 33 px are rejected. SSIM needs 11 px.

The paper's loss ablation (Table 8) leaves one term out: FusionLoss("paper", without=("ssim",)),
with the terms named as in the paper: "int", "text", "ssim".

An optional fourth term, not in the paper and off in both presets, is taken only when given a weight
(`weights={"vif": w}`, `--loss-weights vif=W`): L_vif = 2 - VIFp(I_1 -> I_f) - VIFp(I_2 -> I_f), the
fusion VIF of the metrics (metrics/vif_torch.py; crops of 41 px or more). It rewards keeping each source's
local contrast where averaging halves it; VIF also rewards amplified contrast, so use it beside SSIM.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .metrics.ssim_torch import ms_ssim, ssim
from .metrics.vif_torch import vif_p

PRESETS = {
    "paper": {"intensity": 1.0, "texture": 1.0, "ssim": 10.0},
    "official": {"intensity": 10.0, "texture": 1.0, "ssim": 10.0},
}
# The paper's names for the terms (L_int, L_text, L_ssim) -> the keys of PRESETS and of the logged terms.
TERM_NAMES = {"int": "intensity", "text": "texture", "ssim": "ssim", "vif": "vif"}
OPTIONAL_TERMS = ("vif",)  # not in the presets: computed and logged only when given a weight
_PAPER_TERMS = tuple(t for t in TERM_NAMES if t not in OPTIONAL_TERMS)
_MS_SSIM_FLOOR = 1e-6  # clamp for cs / SSIM before the fractional powers: keeps gradients finite


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|Sobel_x * x| + |Sobel_y * x|, zero padding: (B, 1, H, W) -> (B, 1, H, W)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3): x then y derivative
    return F.conv2d(x, kernels, padding=1).abs().sum(dim=1, keepdim=True)


def intensity_loss(fused: torch.Tensor, img1: torch.Tensor, img2: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """Mean |I_f - max(I_1, I_2)| (or its square): a scalar."""
    diff = fused - torch.maximum(img1, img2)
    return (diff * diff).mean() if squared else diff.abs().mean()


def texture_loss(fused: torch.Tensor, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """Mean | |grad I_f| - max(|grad I_1|, |grad I_2|) | with Sobel gradients: a scalar."""
    target = torch.maximum(sobel_magnitude(img1), sobel_magnitude(img2))
    return (sobel_magnitude(fused) - target).abs().mean()


def vif_loss(fused: torch.Tensor, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """2 - VIFp(I_1 -> I_f) - VIFp(I_2 -> I_f), averaged over the batch: a scalar (in fp32)."""
    return 2.0 - (vif_p(img1, fused) + vif_p(img2, fused)).mean()


def ssim_loss(fused: torch.Tensor, img1: torch.Tensor, img2: torch.Tensor, multiscale: bool = False) -> torch.Tensor:
    """1/2 (1 - S(I_1, I_f)) + 1/2 (1 - S(I_2, I_f)), S = SSIM or 5-scale MS-SSIM on [0, 1]: a scalar.

    Half-precision inputs are scored in float32: the variances and fractional powers need it.
    """
    if fused.dtype in (torch.float16, torch.bfloat16):
        fused, img1, img2 = fused.float(), img1.float(), img2.float()
    if multiscale:
        score = lambda x: ms_ssim(x, fused, 1.0, adapt_window=True, min_value=_MS_SSIM_FLOOR)  # noqa: E731
    else:
        score = lambda x: ssim(x, fused, 1.0)  # noqa: E731
    return 1.0 - 0.5 * (score(img1).mean() + score(img2).mean())


class FusionLoss(nn.Module):
    """Weighted FusionMamba loss. forward(fused, img1, img2), each (B, 1, H, W) in [0, 1], returns
    (total, {"intensity", "texture", "ssim": detached scalar tensors}).

    `without`: terms left out of the total, by the paper's names ("int", "text", "ssim"); they are
    still computed and returned, so logs of an ablation show how the missing term behaves.
    `weights`: {term: weight} by the same names, replacing the preset's weights of those terms.
    """

    def __init__(self, preset: str = "official", without=(), weights=None):
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
        if isinstance(without, str):
            without = (without,)
        unknown = [t for t in without if t not in TERM_NAMES or t in OPTIONAL_TERMS]
        if unknown:
            raise ValueError(f"without: unknown loss term(s) {unknown}; choose from {_PAPER_TERMS}")
        dropped = {TERM_NAMES[t] for t in without}
        if len(dropped) == len(_PAPER_TERMS):
            raise ValueError("without: leaving out every term leaves no loss")
        weights = dict(weights or {})
        unknown = [t for t in weights if t not in TERM_NAMES]
        if unknown:
            raise ValueError(f"weights: unknown loss term(s) {unknown}; choose from {tuple(TERM_NAMES)}")
        bad = {t: w for t, w in weights.items() if not (isinstance(w, (int, float)) and w >= 0)}
        if bad:
            raise ValueError(f"weights must be non-negative numbers, got {bad}")
        chosen = {**PRESETS[preset], **{TERM_NAMES[t]: float(w) for t, w in weights.items()}}
        self.preset = preset
        self.without = tuple(t for t in TERM_NAMES if TERM_NAMES[t] in dropped)  # canonical order
        self.weights = {name: w for name, w in chosen.items()
                        if name not in dropped and not (name in OPTIONAL_TERMS and w == 0)}

    def extra_repr(self) -> str:
        without = f", without={self.without}" if self.without else ""
        return f"preset={self.preset!r}{without}, weights={self.weights}"

    def forward(self, fused: torch.Tensor, img1: torch.Tensor, img2: torch.Tensor):
        _check_images(fused=fused, img1=img1, img2=img2)
        official = self.preset == "official"
        terms = {
            "intensity": intensity_loss(fused, img1, img2, squared=official),
            "texture": texture_loss(fused, img1, img2),
            "ssim": ssim_loss(fused, img1, img2, multiscale=official),
        }
        if "vif" in self.weights:
            terms["vif"] = vif_loss(fused, img1, img2)
        total = sum(weight * terms[name] for name, weight in self.weights.items())
        return total, {name: value.detach() for name, value in terms.items()}


def _check_images(**images: torch.Tensor) -> None:
    shapes = {}
    for name, x in images.items():
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"{name} must have shape (B, 1, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got {x.dtype}")
        shapes[name] = tuple(x.shape)
    if len(set(shapes.values())) > 1:
        raise ValueError(f"fused, img1 and img2 must have the same shape, got {shapes}")
    devices = {name: str(x.device) for name, x in images.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"fused, img1 and img2 must be on one device, got {devices}")
    if min(shapes["fused"][-2:]) < 11:
        raise ValueError(f"images must be at least 11x11 pixels for the SSIM window, got {shapes['fused'][-2:]}")
