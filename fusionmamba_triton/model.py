"""FusionMamba (official class `VSSM_Fusion`): wiring, presets, checkpoint loading and saving.
The architecture is described in the README, "Design notes".

Module and parameter names (`patch_embed1`, `layers`, `layers_up`, `Cross_block`, `final_up`,
`final_conv`, ...) and their registration order are fixed by the official checkpoints: an
official state_dict loads with strict=True and keys come out in the official order.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import pickle
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .files import atomic_write
from .layers import (CMFM, LDC, SS2D, DVSSLayer, FinalPatchExpand, PatchEmbed, autocast_disabled, get_variant,
                     infer_variant)
from .ops import check_backend_name

PRESETS: dict[str, dict] = {
    "base": dict(dims=[96, 192, 384, 768], depths=[2, 2, 9, 2], depths_decoder=[2, 9, 2, 2],
                 dims_decoder=[768, 384, 192, 96]),
    "tiny": dict(dims=[96, 192, 384, 768], depths=[2, 2, 1, 2], depths_decoder=[2, 1, 2, 2],
                 dims_decoder=[768, 384, 192, 96]),
    "small": dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1],
                  dims_decoder=[128, 64, 32, 16]),
    # small's depths at twice its widths: the narrowest preset whose final stage can carry every pixel of
    # both inputs (32 channels for a 4x4 patch of each), which the head needs to undo its + 2 (x1 + x2)
    "medium": dict(dims=[32, 64, 128, 256], depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1],
                   dims_decoder=[256, 128, 64, 32]),
}

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

# The bundled-weights registry: checkpoints shipped in assets/weights/<name>/ (save_pretrained
# folders), name -> what it is (data, recipe; the CLI prints it), and the one each task loads when
# no weights are given. FusionMamba.from_pretrained(name), inference.default_weights(task) and the
# CLI all read it. Shipping new weights: their folder under assets/weights/ plus their lines here.
BUNDLED_WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "weights")
BUNDLED_CHECKPOINTS = {
    "ir-vis-medium": "'medium' preset (11.2 M parameters, stored fp16), trained 19,000 steps (3.9 h) on one CPU core "
                     "on the 125 infrared-visible training pairs (FLIR-derived, research-use data); a CPU-budget "
                     "model, not the paper's weights",
    "medical-medium": "'medium' preset (11.2 M parameters, stored fp16), trained 21,000 steps (3.9 h) on one CPU core "
                      "on 643 CT-, PET- and SPECT-MRI training pairs of the Harvard Whole Brain Atlas (research-use "
                      "data); a CPU-budget model, not the paper's weights",
    "pet-medium": "'medium' preset (11.2 M parameters, stored fp16): medical-medium trained a further 1,000 steps "
                  "(11 min) on one CPU core on the 240 PET-MRI training pairs of the Harvard Whole Brain Atlas "
                  "(research-use data) with a VIF term in the loss; a CPU-budget model, not the paper's weights",
}
TASK_CHECKPOINTS = {
    "ir-vis": "ir-vis-medium",
    "ct-mri": "medical-medium",
    "pet-mri": "pet-medium",
    "spect-mri": "medical-medium",
}
TASK_CHECKPOINTS["gfp-pc"] = TASK_CHECKPOINTS["pet-mri"]  # no GFP / phase-contrast training data: the closest task
DEFAULT_CHECKPOINT = TASK_CHECKPOINTS["ir-vis"]  # the checkpoint of the CLI's default task


class FusionMamba(nn.Module):
    """Fuse two single-channel images: forward(x1, x2) -> (B, 1, H, W), unclipped.

    x1 is the visible (or MRI) image, x2 the infrared (or CT/PET/SPECT) one, both (B, in_chans, H, W)
    with H and W multiples of patch_size * 2 ** (len(dims) - 1) (32 by default).

    One encoder (shared weights) runs on both modalities, each stage input kept as a skip;
    skips 1.. are fused pairwise by DFFM blocks (`Cross_block`) and added into the decoder; the
    head adds 2 * (x1 + x2). `backend` picks the op implementations ("auto", "reference",
    "torch", "triton"); `cmfm_gate="paper"` switches CMFM's second gate to the paper's variant
    (checkpoints were trained with "official").

    `variant` builds one of the paper's structure ablations (Table 7) instead of the full model:
    "dvss_to_evss", "dvss_to_transformer", "dffm_to_dvss", "no_dfem" or "no_cmfm"
    (fusionmamba_triton.layers.ablation says what each removes or replaces). None, the default,
    is the full model with the official state_dict.
    """

    def __init__(self, *, patch_size: int = 4, in_chans: int = 1,
                 depths: Sequence[int] = (2, 2, 9, 2), depths_decoder: Sequence[int] = (2, 9, 2, 2),
                 dims: Sequence[int] | int = (96, 192, 384, 768), dims_decoder: Sequence[int] = (768, 384, 192, 96),
                 d_state: int = 16, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, use_checkpoint: bool = False, cmfm_gate: str = "official",
                 variant: str | None = None, backend: str = "auto"):
        super().__init__()
        blocks = get_variant(variant)
        num_layers = len(depths)
        if isinstance(dims, int):
            dims = [dims * 2 ** i for i in range(num_layers)]
        depths, depths_decoder = [int(d) for d in depths], [int(d) for d in depths_decoder]
        dims, dims_decoder = [int(d) for d in dims], [int(d) for d in dims_decoder]
        _check_widths(dims, depths, dims_decoder, depths_decoder)
        check_backend_name(backend)
        self._config = dict(patch_size=patch_size, in_chans=in_chans, depths=depths, depths_decoder=depths_decoder,
                            dims=dims, dims_decoder=dims_decoder, d_state=d_state, drop_rate=drop_rate,
                            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                            use_checkpoint=use_checkpoint, cmfm_gate=cmfm_gate, variant=variant)
        self.backend = backend
        self.size_multiple = patch_size * 2 ** (num_layers - 1)

        self.patch_embed1 = PatchEmbed(patch_size, in_chans, dims[0])
        self.patch_embed2 = PatchEmbed(patch_size, in_chans, dims[0])
        self.pos_drop = nn.Dropout(drop_rate)

        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        rates_decoder = torch.linspace(0, drop_path_rate, sum(depths_decoder), device="cpu").tolist()[::-1]
        common = dict(d_state=d_state, attn_drop=attn_drop_rate, use_checkpoint=use_checkpoint, backend=backend,
                      block=blocks.stage_block)
        self.layers = nn.ModuleList(
            DVSSLayer(dims[i], depths[i], rates[sum(depths[:i]):sum(depths[:i + 1])],
                      downsample=i < num_layers - 1, **common)
            for i in range(num_layers)
        )
        self.layers_up = nn.ModuleList(
            DVSSLayer(dims_decoder[j], depths_decoder[j],
                      rates_decoder[sum(depths_decoder[:j]):sum(depths_decoder[:j + 1])], upsample=j > 0, **common)
            for j in range(num_layers)
        )
        self.final_up = FinalPatchExpand(dims_decoder[-1], scale=patch_size)
        self.final_conv = nn.Conv2d(dims_decoder[-1] // patch_size, 1, kernel_size=1)
        # Cross_block[0] fuses the finest skip, which the official decoder never uses; it is kept
        # for the checkpoint keys and skipped in forward (the output does not depend on it).
        self.Cross_block = nn.ModuleList(
            blocks.fusion_block(dims[i], d_state=d_state, attn_drop=attn_drop_rate, cmfm_gate=cmfm_gate, backend=backend)
            for i in range(num_layers)
        )
        self.apply(_init_weights)

    # ------------------------------------------------------------------ forward
    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """x1, x2: (B, in_chans, H, W) -> (B, 1, H, W)."""
        self._check_inputs(x1, x2)
        batch = x1.shape[0]
        # The encoder is shared: run both modalities as one batch of 2B.
        x = self.pos_drop(torch.cat([self.patch_embed1(x1), self.patch_embed2(x2)], dim=0))
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        x = x[:batch] + x[batch:]
        num_layers = len(self.layers)
        for j, layer in enumerate(self.layers_up):
            if j > 0:
                i = num_layers - j
                x = x + self.Cross_block[i](skips[i][:batch], skips[i][batch:])
            x = layer(x)
        x = self.final_up(x)  # (B, H, W, d/4)
        # The 1x1 head conv as a matmul on the channels-last map: (B, H, W, 1) is (B, 1, H, W) in memory.
        # Always in fp32: the head is added to 2 * (x1 + x2), so a bf16 head would cost ~1 grey level.
        with autocast_disabled(x.device.type):
            weight, bias = self.final_conv.weight.flatten(1), self.final_conv.bias
            head = F.linear(x.to(weight.dtype), weight, bias).permute(0, 3, 1, 2)
        return head + 2 * (x1 + x2)

    def _check_inputs(self, x1, x2) -> None:
        for name, x in (("x1", x1), ("x2", x2)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
            if not x.is_floating_point():
                raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")
            m, c = self.size_multiple, self._config["in_chans"]
            if x.dim() != 4 or x.shape[1] != c or min(x.shape[2:]) == 0 or x.shape[2] % m or x.shape[3] % m:
                raise ValueError(f"{name} must be (B, {c}, H, W) with H and W positive multiples of {m}, got shape "
                                 f"{tuple(x.shape)} (pad the images first, e.g. with fusionmamba_triton.imaging)")
        if x1.shape != x2.shape:
            raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
        if x1.device != x2.device:
            raise ValueError(f"x1 and x2 must be on one device, got {x1.device} and {x2.device}")

    # ------------------------------------------------------------------ configuration
    @property
    def config(self) -> dict:
        """The constructor keyword arguments (without `backend`): FusionMamba(**model.config) rebuilds it."""
        return copy.deepcopy(self._config)

    def set_backend(self, backend: str) -> "FusionMamba":
        """Switch every op-calling submodule to `backend` ("auto", "reference", "torch", "triton")."""
        check_backend_name(backend)
        for module in self.modules():
            if isinstance(module, (SS2D, CMFM, LDC)):
                module.backend = backend
        self.backend = backend
        return self

    @contextlib.contextmanager
    def frozen(self):
        """Treat the weights as constants inside this block (inference over many images or tiles). With
        autograd off, on a CPU each LDC builds its modulated weight once instead of on every call, and the
        matrix products, LDC and depthwise convolutions run through oneDNN with their weights packed once (fp32,
        or bf16 under bf16 autocast), the SiLU / GELU that follow some of them applied as oneDNN writes their
        outputs; on a GPU, under autocast, every matrix-product weight is cast to 16 bits once.
        About 20% of a base forward on a CPU. Outputs are the same up to summation order (fp32: about 1e-5);
        the kept weights cost memory (for `base`, whose parameters are 860 MB: about 530 MB in fp32, 260 MB in
        bf16). Do not change the weights inside the block; nested blocks are fine.

            with model.frozen(), torch.inference_mode():
                fused = [model(a, b) for a, b in pairs]
        """
        modules = [module for module in self.modules() if hasattr(module, "frozen_cache")]
        previous = [module.frozen_cache for module in modules]
        for module, cache in zip(modules, previous):
            module.frozen_cache = {} if cache is None else cache
        try:
            yield self
        finally:
            for module, cache in zip(modules, previous):
                module.frozen_cache = cache

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "FusionMamba":
        """A new, randomly initialised model of preset `name` (see PRESETS), with keyword overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**copy.deepcopy(PRESETS[name]), **overrides})

    # ------------------------------------------------------------------ weights
    @classmethod
    def from_pretrained(cls, path_or_state_dict, preset: str | None = None, map_location="cpu",
                        backend: str = "auto", **overrides) -> "FusionMamba":
        """Build a model and load weights strictly; returned in eval mode.

        Accepts an official .pth/.pt (a plain state_dict, one wrapped under "model" or
        "state_dict", DataParallel "module." prefixes allowed), a .safetensors file, a directory
        written by save_pretrained, or a state dict. The configuration comes from `preset`, else
        from the directory's config.json, else it is inferred from the tensor shapes (the ablation
        `variant` from the key names); keyword `overrides` are applied on top.
        """
        state_dict, config, source = _read_checkpoint(path_or_state_dict, map_location)
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
            config = {**copy.deepcopy(PRESETS[preset]), "variant": infer_variant(state_dict)}
        elif config is None:
            config = infer_config(state_dict, source)
        model = cls(**{**config, **overrides, "backend": backend})
        _check_state_dict(model, state_dict, source)
        model.load_state_dict(state_dict, strict=True)
        return model.eval()

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `model.safetensors` and `config.json` into `directory` (each written whole, then renamed)."""
        from safetensors.torch import save

        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        atomic_write(os.path.join(directory, WEIGHTS_NAME), lambda f: f.write(save(tensors, metadata={"format": "pt"})))
        atomic_write(os.path.join(directory, CONFIG_NAME), lambda f: json.dump(self.config, f, indent=2), mode="w")


# ---------------------------------------------------------------------- helpers
def _check_widths(dims, depths, dims_decoder, depths_decoder) -> None:
    n = len(depths)
    if n < 1 or not len(dims) == len(dims_decoder) == len(depths_decoder) == n:
        raise ValueError(f"dims, depths, dims_decoder and depths_decoder need one entry per stage, got lengths "
                         f"{len(dims)}, {n}, {len(dims_decoder)}, {len(depths_decoder)}")
    if any(dims[i + 1] != 2 * dims[i] for i in range(n - 1)):
        raise ValueError(f"each encoder stage doubles the width (patch merging), got dims={dims}")
    if dims_decoder != dims[::-1]:
        raise ValueError(f"dims_decoder must be dims reversed ({dims[::-1]}), got {dims_decoder}")
    if any(d < 0 for d in depths + depths_decoder):
        raise ValueError(f"depths must be non-negative, got {depths} and {depths_decoder}")


def _init_weights(module: nn.Module) -> None:
    """Official init: Linear weights trunc_normal(std 0.02) and zero bias, LayerNorm 1 / 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def bundled_checkpoint(name: str = DEFAULT_CHECKPOINT) -> str:
    """Folder (model.safetensors + config.json) of the checkpoint shipped with the package as `name`."""
    if name not in BUNDLED_CHECKPOINTS:
        bundled = ", ".join(sorted(BUNDLED_CHECKPOINTS))
        raise FileNotFoundError(f"no bundled checkpoint named {name!r} (bundled: {bundled}), "
                                "and no file or directory at that path")
    path = os.path.join(BUNDLED_WEIGHTS_DIR, name)
    if not os.path.isfile(os.path.join(path, WEIGHTS_NAME)):
        raise FileNotFoundError(f"the bundled checkpoint {name!r} is missing from this installation (expected {path})")
    return path


def task_checkpoint(task: str) -> str:
    """Name of the bundled checkpoint that `task` ("ir-vis", "ct-mri", ...) uses when no weights are given."""
    if task not in TASK_CHECKPOINTS:
        raise ValueError(f"there are no bundled weights for task {task!r} (tasks with bundled weights: "
                         f"{', '.join(sorted(TASK_CHECKPOINTS))}); pass --weights PATH")
    return TASK_CHECKPOINTS[task]


def bundled_preset(name: str) -> str | None:
    """The preset (see PRESETS) whose architecture the bundled checkpoint `name` has, None if none matches."""
    with open(os.path.join(bundled_checkpoint(name), CONFIG_NAME)) as f:
        config = json.load(f)
    return next((preset for preset, arch in PRESETS.items() if all(config.get(k) == v for k, v in arch.items())), None)


def _read_checkpoint(source, map_location):
    """-> (state_dict, config or None, description of the source for error messages)."""
    config = None
    if isinstance(source, Mapping):
        state, where = source, "the given state dict"
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            path = bundled_checkpoint(path)
        where = f"checkpoint {path}"
        if os.path.isdir(path):
            weights = os.path.join(path, WEIGHTS_NAME)
            if not os.path.isfile(weights):
                raise FileNotFoundError(f"{path} has no {WEIGHTS_NAME} "
                                        "(expected a directory written by save_pretrained)")
            config_path = os.path.join(path, CONFIG_NAME)
            if os.path.isfile(config_path):
                with open(config_path) as f:
                    config = json.load(f)
            path = weights
        state = _load_file(path, map_location)
    else:
        raise TypeError(f"expected a checkpoint path, a directory or a state dict, got {type(source).__name__}")
    return _unwrap_state_dict(state, where), config, where


def _load_file(path: str, map_location) -> Mapping:
    if not path.endswith(".safetensors") and not _looks_like_torch_save(path):
        raise ValueError(f"could not read checkpoint {path}: not a PyTorch checkpoint (.pth / .pt), a .safetensors "
                         "file or a save_pretrained folder")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            device = str(map_location) if map_location is not None else "cpu"
            return load_file(path, device=device)
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # weights_only refuses pickled objects other than tensors and containers
        raise ValueError(f"could not read checkpoint {path}: it stores Python objects besides tensors, which are not "
                         "loaded for safety; if you trust the file, read it with torch.load(path, weights_only=False), "
                         "torch.save its state dict alone and pass that file") from None
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"could not read checkpoint {path}: {message}") from exc


def _looks_like_torch_save(path: str) -> bool:
    """True for files torch.save can have written: a zip archive, or a legacy pickle (protocol 2+)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _unwrap_state_dict(state, where: str) -> dict:
    for _ in range(3):  # e.g. {"model": {"state_dict": ...}}
        if not isinstance(state, Mapping):
            break
        inner = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{where} holds no state dict (got {type(state).__name__})")
    if all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{where} has non-tensor entries, e.g. {bad[:3]}")
    return dict(state)


def infer_config(state_dict: Mapping, where: str = "the state dict") -> dict:
    """Read patch_size, in_chans, dims, depths and d_state off the tensor shapes of an official state dict."""
    key = "patch_embed1.proj.weight"
    if key not in state_dict:
        raise ValueError(f"cannot infer the model configuration from {where}: it has no {key!r}; pass preset=")
    dim0, in_chans, patch_size, _ = state_dict[key].shape

    def count(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})

    num_layers = count("layers.")
    depths = [count(f"layers.{i}.blocks.") for i in range(num_layers)]
    depths_decoder = [count(f"layers_up.{j}.blocks.") for j in range(num_layers)]
    dims = [dim0 * 2 ** i for i in range(num_layers)]
    a_logs = next((v for k, v in state_dict.items() if k.endswith("A_logs")), None)
    config = dict(patch_size=int(patch_size), in_chans=int(in_chans), dims=dims, depths=depths,
                  depths_decoder=depths_decoder, dims_decoder=dims[::-1])
    if a_logs is not None:
        config["d_state"] = int(a_logs.shape[-1])
    variant = infer_variant(state_dict)
    if variant is not None:
        config["variant"] = variant
    return config


def _check_state_dict(model: nn.Module, state_dict: Mapping, where: str, shown: int = 5) -> None:
    """Raise one clear ValueError listing missing and unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            more = f", ... ({len(items) - shown} more)" if len(items) > shown else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:shown])}{more}")
    cfg = ", ".join(f"{k}={v}" for k, v in model.config.items()
                    if k in ("dims", "depths", "depths_decoder", "d_state") or (k == "variant" and v is not None))
    raise ValueError(f"{where} does not fit FusionMamba({cfg}): " + "; ".join(parts))
