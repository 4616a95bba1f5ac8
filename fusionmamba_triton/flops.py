"""Counting the cost of a forward pass, completely and in one convention.

Two counters:

- `count_flops` runs the model under `torch.utils.flop_counter.FlopCounterMode` (the total) and a
  small dispatch mode of our own that files every counted op under a component (linear, conv,
  depthwise conv, LDC conv, SSM projections, selective scan, attention matmul, ...), using the
  module that issued it. Both read the same formulas (`flop_registry`, which also holds the
  formulas registered for our custom ops `fusionmamba::selective_scan` and
  `fusionmamba::ldc_conv2d`), so the breakdown sums to the total.
  Convention: FLOPs, with one multiply-add = 2 FLOPs for matmuls and convolutions; the selective
  scan uses the community formula 9·B·L·D·N (+ B·D·L for D, + B·D·L for z). MACs = FLOPs / 2.
- `count_hook_macs` is what a module-hook counter such as thop reports: it only sees calls of
  nn.Linear and nn.Conv2d modules (weight multiply-adds, no bias), so functional convolutions
  (the LDC), einsum projections, the scan and attention matmuls are missed. Our SS2D calls its
  in_proj functionally on weight halves, so real hooks miss it too; `FlopReport.hook_visible_flops`
  is the same count as if every nn.Linear / nn.Conv2d were called as a module (the official code).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

__all__ = ["FlopReport", "count_flops", "count_hook_macs", "classify_op"]

CONV_OPS = ("convolution", "_convolution", "conv2d", "conv1d", "cudnn_convolution", "_slow_conv2d_forward")
MATMUL_OPS = ("mm", "addmm", "bmm", "baddbmm", "matmul")


@dataclass
class FlopReport:
    """Result of `count_flops`: total FLOPs, FLOPs by component and by op name."""

    total_flops: int
    by_component: dict[str, int] = field(default_factory=dict)
    by_op: dict[str, int] = field(default_factory=dict)
    # "linear" + "conv" + "depthwise conv": what thop would see if every nn.Linear / nn.Conv2d
    # were called as a module (true of the official code)
    hook_visible_flops: int = 0

    @property
    def total_macs(self) -> float:
        return self.total_flops / 2


def _is_ldc(module: nn.Module) -> bool:
    return hasattr(module, "learnable_mask") and hasattr(module, "base_mask")


def _owns_scan(module: nn.Module) -> bool:
    return hasattr(module, "x_proj_weight") or hasattr(module, "A_logs")


def _weight_owners(model: nn.Module) -> dict[int, nn.Module]:
    """id() of each nn.Linear / nn.Conv1d / nn.Conv2d weight -> its module."""
    return {
        id(m.weight): m
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and m.weight is not None
    }


def _owner_of(args, owners: dict[int, nn.Module]) -> nn.Module | None:
    """The module whose weight, or a view of it (a slice, a transpose), is among the op's arguments."""
    for a in args:
        if isinstance(a, torch.Tensor):
            owner = owners.get(id(a)) or (owners.get(id(a._base)) if a._base is not None else None)
            if owner is not None:
                return owner
    return None


def classify_op(op_name: str, owner: nn.Module | None, stack: list[nn.Module]) -> str:
    """Component name for a counted op, from its name, the module whose weight it uses (if any)
    and the stack of modules running it."""
    if op_name.startswith("fusionmamba::selective_scan"):
        return "selective scan"
    if op_name.startswith("fusionmamba::ldc"):
        return "LDC conv"
    base = op_name.split("::")[-1]
    if any(_is_ldc(m) for m in stack):
        return "LDC conv"  # a functional LDC path: conv2d with the modulated weight
    if isinstance(owner, nn.Linear):
        return "linear"
    if isinstance(owner, nn.Conv1d):
        return "conv1d"
    if isinstance(owner, nn.Conv2d):
        if owner.groups > 1 and owner.groups == owner.in_channels:
            return "depthwise conv"
        return "conv"
    if base in CONV_OPS:
        return "conv (functional)"
    if any(_owns_scan(m) for m in stack):
        return "SSM projections (x_proj, dt_proj)"
    if base in MATMUL_OPS:
        return "attention / other matmul"
    return "other"


class _ComponentCounter(TorchDispatchMode):
    """Files the FLOPs of each op that `flop_registry` knows under a component."""

    def __init__(self, stack: list[nn.Module], owners: dict[int, nn.Module]):
        super().__init__()
        self.stack, self.owners = stack, owners
        self.by_component: dict[str, int] = defaultdict(int)
        self.by_op: dict[str, int] = defaultdict(int)
        self.hook_visible = 0  # FLOPs of ops taking an nn.Linear / nn.Conv2d weight as it is

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            flops = int(flop_registry[packet](*args, **kwargs, out_val=out))
            name = getattr(packet, "_qualified_op_name", str(packet))  # e.g. "aten::mm"
            owner = _owner_of(args, self.owners)
            component = classify_op(name, owner, self.stack)
            self.by_op[name] += flops
            self.by_component[component] += flops
            if component in ("linear", "conv", "depthwise conv"):
                self.hook_visible += flops
        return out


def _track_modules(model: nn.Module, stack: list[nn.Module]):
    def push(module, _inputs):
        stack.append(module)

    def pop(module, _inputs, _output):
        if stack and stack[-1] is module:
            stack.pop()

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(push))
        handles.append(module.register_forward_hook(pop))
    return handles


@torch.no_grad()
def count_flops(model: nn.Module, *inputs: torch.Tensor, **kwargs) -> FlopReport:
    """Run `model(*inputs, **kwargs)` once and count its FLOPs (see the module docstring). Inside
    FusionMamba.frozen() the kept weights are set aside for the count: packed oneDNN calls have no formula.
    The model runs outside inference mode (grad mode kept): inference mode records no view bases, and the
    breakdown finds a weight's module through them."""
    stack: list[nn.Module] = []
    handles = _track_modules(model, stack)
    frozen = {m: m.frozen_cache for m in model.modules() if getattr(m, "frozen_cache", None) is not None}
    try:
        for module in frozen:
            module.frozen_cache = None
        counter = FlopCounterMode(display=False)
        grad = torch.is_grad_enabled()
        with torch.inference_mode(False), torch.set_grad_enabled(grad), counter, \
                _ComponentCounter(stack, _weight_owners(model)) as components:
            model(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
        for module, cache in frozen.items():
            module.frozen_cache = cache
    total = int(counter.get_total_flops())
    by_component = dict(components.by_component)
    unfiled = total - sum(by_component.values())
    if unfiled:  # should not happen: both read flop_registry; keep the report complete anyway
        by_component["other"] = by_component.get("other", 0) + unfiled
    return FlopReport(total, by_component, dict(components.by_op), components.hook_visible)


@torch.no_grad()
def count_hook_macs(model: nn.Module, *inputs: torch.Tensor, **kwargs) -> dict[str, int]:
    """MACs a thop-style counter sees: nn.Linear and nn.Conv2d module calls only (weights, no bias).

    Returns {"linear": ..., "conv2d": ..., "total": ...}.
    """
    counts = {"linear": 0, "conv2d": 0}

    def on_linear(module: nn.Linear, _inputs, output):
        counts["linear"] += output.numel() * module.in_features

    def on_conv(module: nn.Conv2d, _inputs, output):
        kh, kw = module.kernel_size
        counts["conv2d"] += output.numel() * (module.in_channels // module.groups) * kh * kw

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(on_linear))
        elif isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(on_conv))
    try:
        model(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    counts["total"] = counts["linear"] + counts["conv2d"]
    return counts
