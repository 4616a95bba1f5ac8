"""Ahead-of-time compilation of Triton kernels for NVIDIA GPUs, on any machine (no GPU needed).

Used by the tests and the resource report: the interpreter accepts code the real compiler
rejects, so every kernel is also compiled to PTX and cubin for sm_80 and sm_90 here.

Resources come from ptxas's own report (`ptxas -v`, with the options Triton passes it), read while
Triton assembles the kernel: registers per thread, spill stores (bytes per thread written to local
memory because registers ran out) and the stack frame. A stack frame can be non-zero without any
spill (the ABI's frame for saved registers), so "spill-free" means zero spill stores.
"""
from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


@dataclass
class CompiledResources:
    name: str
    arch: int
    registers: int
    spill_bytes: int  # spill stores per thread (ptxas -v); -1 when ptxas printed no report
    stack_bytes: int  # stack frame per thread
    shared_bytes: int
    ptx_lines: int


@contextlib.contextmanager
def _ptxas_log():
    """Recompile (no cache hit) and capture the ptxas -v log Triton prints when asked to."""
    from triton import knobs

    saved = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = True, True
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            yield out
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = saved


def parse_ptxas_log(text: str) -> tuple[int, int, int]:
    """(registers, spill-store bytes, stack-frame bytes) from ptxas -v output; -1 where absent."""
    regs = re.search(r"Used (\d+) registers", text)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return (int(regs.group(1)) if regs else -1, int(frame.group(2)) if frame else -1,
            int(frame.group(1)) if frame else -1)


def compile_kernel(fn, signature: dict[str, str], constexprs: dict[str, object], arch: int = 90,
                   num_warps: int = 4, num_stages: int = 3, maxnreg: int | None = None) -> CompiledResources:
    """Compile `fn` (a @triton.jit function) for sm_`arch`; raise on any compiler error.

    `signature` maps every argument name to a Triton type ("*fp32", "i32", "fp32", "constexpr").
    """
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    with _ptxas_log() as log:
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    regs, spill, stack = parse_ptxas_log(log.getvalue())
    name = getattr(fn, "__name__", None) or fn.fn.__name__
    return CompiledResources(name, arch, regs, spill, stack, int(compiled.metadata.shared),
                             compiled.asm["ptx"].count("\n"))
