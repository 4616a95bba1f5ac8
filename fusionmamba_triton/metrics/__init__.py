"""Image-fusion quality metrics in the conventions of the published code families (described here).

    from fusionmamba_triton.metrics import evaluate
    scores = evaluate(ir, vis, fused)                  # all metrics, canonical math
    scores = evaluate(ir, vis, fused, ["mi", "ssim"], convention="cddfuse")

Images are on the 0-255 scale. METRICS lists the names: the FusionMamba paper's six (vif, scd,
qabf, sf, ms_ssim, fmi_edge) then fmi_pixel, fmi_dct, fmi_w, en, sd, mi, ag, ssim, psnr, cc and
nabf. "fmi" is accepted as an alias of "fmi_edge": every published fmi.m copy defaults to Sobel
edge features in code, so the MATLAB-family "FMI_pixel" and MEFB "FMI" columns are edge FMI.

Conventions (published numbers are only comparable within one family):

| metric | canonical (default)           | matlab (Tang 2023)          | cddfuse                     | vifb                    |
|--------|-------------------------------|-----------------------------|-----------------------------|-------------------------|
| EN, MI | uint8 by rounding half away   | same                        | np.round                    | floor / min-max rescale |
| MI     | bits                          | bits                        | nats                        | nats                    |
| SF     | means over the differences    | same                        | same                        | sums / MN               |
| AG     | sum / (M-1)(N-1)              | same                        | mean over MN                | sum / (M-1)(N-1)        |
| SSIM   | Wang 11/1.5, L=255, mean of 2 | MATLAB ssim, L=1, mean of 2 | skimage 0.19, L=2, sum of 2 | Wang, L=255, sum of 2   |
| PSNR   | 10 log10(255^2 / MSE)         | standard + 48.13 dB         | max(F)^2 as the peak        | VIFB's non-MSE formula  |
| Nabf   | Nabf(F; A, B)                 | Tang's swapped call         | canonical                   | canonical               |
| colour | Y (BT.601)                    | Y                           | Y                           | per RGB channel, mean   |

EN, SD, VIF (VIFp sum, sigma_n^2 = 2), SCD, CC, Q^AB/F (with the published G = g_F quirk where
g_A == g_F), MS-SSIM (Wang 2003, 5 scales, mean of the two sources) and FMI are the same in every
convention, and a family that lacks a metric gets the canonical one (VIFB has no VIF, SCD, CC,
Nabf, FMI or MS-SSIM; CDDFuse has no Nabf, FMI or MS-SSIM).
The "matlab" SSIM follows MATLAB's documented `ssim` (Gaussian sigma 1.5, 11 taps, replicate
padding, DynamicRange 1 on 0-255 doubles) and has not been checked against MATLAB itself.
The MATLAB family's "MS_SSIM" column is Ma et al.'s MEF-SSIM, which is not reproduced.
Undefined values (a correlation with a constant image, PSNR of identical images, a metric whose
window or scales do not fit a small image) come back as NaN or inf rather than raising; `evaluate`
warns once per call (UndefinedMetricWarning) naming the metrics an image was too small for.
"""
from .api import ALIASES, COLOUR_MODES, METRICS, UndefinedMetricWarning, evaluate, rgb_to_y
from .core import CONVENTIONS, PSNR_TANG_OFFSET_DB, qabf, vif_p
from .feature_mi import FMI_FEATURES, fmi
from .ssim_torch import ImageTooSmallError

__all__ = [
    "ALIASES",
    "COLOUR_MODES",
    "CONVENTIONS",
    "FMI_FEATURES",
    "ImageTooSmallError",
    "METRICS",
    "PSNR_TANG_OFFSET_DB",
    "UndefinedMetricWarning",
    "evaluate",
    "fmi",
    "qabf",
    "rgb_to_y",
    "vif_p",
]
