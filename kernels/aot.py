"""Ahead-of-time compilation of Triton kernels for NVIDIA GPUs, on any machine (no GPU needed).

Used by the tests and the resource report: the interpreter accepts code the real compiler
rejects, so every kernel is also compiled to PTX and cubin for sm_80 and sm_90 here.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


@dataclass
class CompiledResources:
    name: str
    arch: int
    registers: int
    spill_bytes: int  # local memory per thread (spill stores), from cuobjdump -res-usage
    shared_bytes: int
    ptx_lines: int


def cuobjdump_path() -> str | None:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else None


def _resource_usage(cubin: bytes) -> tuple[int, int, int]:
    """(registers, local-memory bytes, shared bytes) read from cuobjdump -res-usage."""
    tool = cuobjdump_path()
    if tool is None:
        return -1, -1, -1
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    regs = re.search(r"REG:(\d+)", text)
    stack = re.search(r"STACK:(\d+)", text)
    local = re.search(r"LOCAL:(\d+)", text)
    shared = re.search(r"SHARED:(\d+)", text)
    spill = max(int(stack.group(1)) if stack else 0, int(local.group(1)) if local else 0)
    return int(regs.group(1)) if regs else -1, spill, int(shared.group(1)) if shared else 0


def compile_kernel(fn, signature: dict[str, str], constexprs: dict[str, object], arch: int = 90,
                   num_warps: int = 4, num_stages: int = 3) -> CompiledResources:
    """Compile `fn` (a @triton.jit function) for sm_`arch`; raise on any compiler error.

    `signature` maps every argument name to a Triton type ("*fp32", "i32", "fp32", "constexpr").
    """
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    regs, spill, shared = _resource_usage(compiled.asm["cubin"])
    shared = max(shared, int(compiled.metadata.shared))
    name = getattr(fn, "__name__", None) or fn.fn.__name__
    return CompiledResources(name, arch, regs, spill, shared, compiled.asm["ptx"].count("\n"))
