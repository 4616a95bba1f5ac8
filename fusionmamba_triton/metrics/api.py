"""`evaluate`: input checking, colour handling and metric dispatch for one (A, B, F) triple."""
from __future__ import annotations

import warnings
from typing import Callable, Iterable

import numpy as np
import torch

from ..imaging import rgb_to_grey as rgb_to_y
from . import core
from .core import CONVENTIONS
from .feature_mi import fmi
from .ssim_torch import ImageTooSmallError


class UndefinedMetricWarning(UserWarning):
    """Some metrics could not be computed for an image (too small for them) and came back as NaN.

    `reasons` maps each such metric name to why, e.g. {"ms_ssim": "... needs a short side above 160 px"}.
    """

    def __init__(self, message: str, reasons: dict[str, str] | None = None):
        super().__init__(message)
        self.reasons = dict(reasons or {})


_METRIC_FUNCTIONS: dict[str, Callable] = {
    # the six metrics of the FusionMamba paper
    "vif": core.vif,
    "scd": core.scd,
    "qabf": core.qabf,
    "sf": core.spatial_frequency,
    "ms_ssim": core.ms_ssim,
    "fmi_edge": lambda a, b, f, convention: fmi(a, b, f, "edge"),
    # the others users expect
    "fmi_pixel": lambda a, b, f, convention: fmi(a, b, f, "none"),
    "fmi_dct": lambda a, b, f, convention: fmi(a, b, f, "dct"),
    "fmi_w": lambda a, b, f, convention: fmi(a, b, f, "wavelet"),
    "en": core.entropy,
    "sd": core.standard_deviation,
    "mi": core.mutual_information,
    "ag": core.average_gradient,
    "ssim": core.structural_similarity,
    "psnr": core.psnr,
    "cc": core.correlation_coefficient,
    "nabf": core.nabf,
}
METRICS = tuple(_METRIC_FUNCTIONS)
# "fmi" is FMI on Sobel edge features: the feature every published fmi.m copy uses in code (and
# so what the MATLAB-family "FMI_pixel" and MEFB "FMI" columns report).
ALIASES = {"fmi": "fmi_edge"}
COLOUR_MODES = ("y", "per_channel")


def _to_array(name: str, x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"{name} must hold integer or floating grey values (0-255), got dtype {x.dtype}")
        x = x.detach().to("cpu", torch.float64).numpy()
    elif not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{name} must hold integer or floating grey values (0-255), got dtype {x.dtype}")
    if not (x.ndim == 2 or (x.ndim == 3 and x.shape[2] == 3)):
        raise ValueError(f"{name} must be a 2-D grey image (H, W) or an RGB image (H, W, 3), got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _resolve_metrics(metrics: Iterable[str] | str | None) -> list[str]:
    if metrics is None:
        return list(METRICS)
    if isinstance(metrics, str):
        metrics = [metrics]
    names = list(metrics)
    unknown = [m for m in names if m not in _METRIC_FUNCTIONS and m not in ALIASES]
    if unknown:
        raise ValueError(f"metrics: unknown name(s) {unknown}; choose from {METRICS + tuple(ALIASES)}")
    if not names:
        raise ValueError("metrics must name at least one metric (or be None for all)")
    return names


def evaluate(a, b, fused, metrics=None, convention: str = "canonical", colour: str | None = None) -> dict[str, float]:
    """Score one fusion result: {metric name: value} for sources `a`, `b` and image `fused`.

    Inputs: numpy arrays or torch tensors on the 0-255 scale, (H, W) grey or (H, W, 3) RGB, same
    H x W. `metrics`: names from METRICS (or "fmi" = "fmi_edge"); None scores all of them.
    `convention`: "canonical" (default), "matlab" (Tang / Hui Li MATLAB), "cddfuse" or "vifb";
    see the package docstring for what each changes. `colour`: "y" scores the BT.601 luma of RGB
    inputs, "per_channel" averages the scores over R, G, B (grey inputs are repeated); the default
    is "per_channel" for the vifb convention (as VIFB does) and "y" otherwise. Warns when all
    three images lie within [0, 1] (probably not 0-255 data).

    A metric the image is too small for (MS-SSIM needs a short side above 160 px, VIF 41 px,
    SSIM 11 px, FMI 3 px) is NaN, with one UndefinedMetricWarning per call naming them all.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if colour is None:
        colour = "per_channel" if convention == "vifb" else "y"
    if colour not in COLOUR_MODES:
        raise ValueError(f"colour must be one of {COLOUR_MODES} or None, got {colour!r}")
    names = _resolve_metrics(metrics)
    images = {"a": _to_array("a", a), "b": _to_array("b", b), "fused": _to_array("fused", fused)}
    if max(float(x.max()) for x in images.values()) <= 1.0:
        warnings.warn(
            "all three images lie within [0, 1]; the metrics expect the 0-255 scale (VIF, Q^AB/F, Nabf, "
            "SF, AG, SD, EN, MI and PSNR depend on it): multiply by 255",
            stacklevel=2,
        )
    sizes = {name: x.shape[:2] for name, x in images.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"a, b and fused must have the same height and width, got {sizes}")

    if colour == "y" or all(x.ndim == 2 for x in images.values()):
        planes = [tuple(rgb_to_y(x) if x.ndim == 3 else x for x in images.values())]
    else:
        planes = [tuple(x[..., c] if x.ndim == 3 else x for x in images.values()) for c in range(3)]

    results, undefined = {}, {}
    for name in names:
        metric = _METRIC_FUNCTIONS[ALIASES.get(name, name)]
        try:
            results[name] = float(np.mean([metric(pa, pb, pf, convention=convention) for pa, pb, pf in planes]))
        except ImageTooSmallError as exc:
            results[name] = float("nan")
            undefined[name] = str(exc).rsplit(", got", 1)[0]
    if undefined:
        height, width = sizes["fused"]
        listed = "; ".join(f"{name} ({reason})" for name, reason in undefined.items())
        message = f"a {width}x{height} image is too small for {len(undefined)} metric(s), scored NaN: {listed}"
        warnings.warn(UndefinedMetricWarning(message, undefined), stacklevel=2)
    return results
