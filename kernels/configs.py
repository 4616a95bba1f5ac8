"""The model's kernel shapes and every kernel's tuning space, in one place (no triton import).

The launchers (autotuning on CUDA), the ahead-of-time compile specs (`aot_specs()` in each kernels
module, compiled by tests/kernels/test_aot_compile.py) and benchmarks/bench_kernels.py all read
these tables, so a config that is tuned on a GPU is also one that CI compiled and checked for spills.

Model shapes: FusionMamba with channel widths C = MODEL_DIMS[i] at stage i (patch size 4), for an
H x W input: the stage map is h x w = H / 2^(i+2) x W / 2^(i+2); LDC runs C -> C on it; the ES2D
gather/merge move d_inner = 2C channels into L = ceil(h/2) * ceil(w/2) steps per parity group; the
selective scan runs 4 groups of d_inner channels, D = 8C, with N = MODEL_D_STATE states and
grouped B/C (batch, 4, N, L).

Tuning: on CUDA each launcher picks the fastest of its configs per shape with `triton.autotune`
(timed on the first call of a shape); under the interpreter, or with FUSIONMAMBA_AUTOTUNE=0, it
uses the first config of each list. Tests run every config explicitly.
"""
from __future__ import annotations

import math
import os

MODEL_DIMS = (96, 192, 384, 768)  # the base/tiny presets; "small" is (16, 32, 64, 128)
MODEL_D_STATE = 16
MODEL_SCAN_GROUPS = 4
BENCH_SIZES = ((256, 256), (480, 640))  # the official code's size, and a VGA pair


def stage_shapes(height: int, width: int, dims=MODEL_DIMS) -> list[dict]:
    """One dict per stage: name, C (LDC channels), h, w, d_inner (ES2D channels), L, D (scan channels)."""
    shapes = []
    for i, c in enumerate(dims):
        h, w = height // 2 ** (i + 2), width // 2 ** (i + 2)
        shapes.append({"name": f"{height}x{width}/s{i}", "C": c, "h": h, "w": w, "d_inner": 2 * c,
                       "L": math.ceil(h / 2) * math.ceil(w / 2), "D": MODEL_SCAN_GROUPS * 2 * c})
    return shapes


def model_shapes() -> list[dict]:
    """The stages of every BENCH_SIZES input."""
    return [s for size in BENCH_SIZES for s in stage_shapes(*size)]


def autotune_enabled() -> bool:
    """Tune on CUDA unless FUSIONMAMBA_AUTOTUNE=0 (the tests' default config run) or the interpreter runs."""
    return os.environ.get("FUSIONMAMBA_AUTOTUNE", "1") != "0" and os.environ.get("TRITON_INTERPRET", "0") != "1"


# ------------------------------------------------------------------------------------------ scan
# A scan program owns BLOCK_D channels x BLOCK_N states (BLOCK_N = N rounded up to a power of 2) and
# walks the sequence CHUNK steps at a time, with a parallel scan inside each chunk. Configs give
# TILE_DN = BLOCK_D * BLOCK_N (so BLOCK_D = TILE_DN / BLOCK_N, at least 1): the same register
# budget for any N. Register tiles hold TILE_DN * CHUNK fp32 values per tensor, spread over
# 32 * num_warps threads.
#
# Training saves the state entering every STATE_CHUNK steps (chunk_states); the backward walks
# those segments in reverse with CHUNK = STATE_CHUNK and a fixed BLOCK_D, so its per-program
# partial dB/dC buffers have one shape whatever config runs. Inference saves nothing and may use
# longer chunks.
STATE_CHUNK = 32
# Every config compiles spill-free for sm_80 and sm_90 with the model's flags and with every optional
# branch on, with triton 3.6, 3.8 and 3.9 (python -m fusionmamba_triton.kernels.report): 72-253
# registers per thread; the backward at 4 warps with every option is the tightest (up to 253 of 255).
SCAN_FWD_INFER_CONFIGS = (  # first: the default (untuned) config
    {"TILE_DN": 32, "CHUNK": 32, "num_warps": 4},
    {"TILE_DN": 16, "CHUNK": 32, "num_warps": 4},
    {"TILE_DN": 32, "CHUNK": 32, "num_warps": 8},
    {"TILE_DN": 16, "CHUNK": 64, "num_warps": 4},
    {"TILE_DN": 16, "CHUNK": 64, "num_warps": 8},
    {"TILE_DN": 16, "CHUNK": 128, "num_warps": 8},  # 256 steps spill (8 warps) or hit the 128-register cap (16)
)
SCAN_FWD_TRAIN_CONFIGS = tuple(c for c in SCAN_FWD_INFER_CONFIGS if STATE_CHUNK % c["CHUNK"] == 0) + (
    {"TILE_DN": 32, "CHUNK": 16, "num_warps": 4},
)
SCAN_BWD_TILE_DN = 32
SCAN_BWD_CONFIGS = (
    {"TILE_DN": SCAN_BWD_TILE_DN, "CHUNK": STATE_CHUNK, "num_warps": 8},
    {"TILE_DN": SCAN_BWD_TILE_DN, "CHUNK": STATE_CHUNK, "num_warps": 4},
)


def register_budget(num_warps: int) -> int:
    """The register cap (maxnreg) the kernels compile with: all a thread can have at num_warps.

    Without an explicit cap ptxas may spill a few bytes to land on an occupancy step (seen at 80, 96
    and 128 registers with 8-byte spills); a latency-bound scan with a few programs per
    multiprocessor gains nothing from that occupancy.
    """
    return min(255, 65536 // (32 * num_warps))


def scan_block_n(dstate: int) -> int:
    return max(2, 1 << (dstate - 1).bit_length())


def scan_block_d(tile_dn: int, dstate: int) -> int:
    return max(1, tile_dn // scan_block_n(dstate))


# ------------------------------------------------------------------------------------------- LDC
# Implicit-GEMM 3x3 convolution: BLOCK_M pixels x BLOCK_N output channels per program, K = input
# channels x 9 taps in BLOCK_K steps. At batch 1 the late stages have few pixels (8 x 8 at
# 256 x 256), so the K loop is also split over SPLIT_K programs (fp32 partial sums, added after)
# until about LDC_PROGRAMS_PER_SM programs per multiprocessor run; smaller tiles are in the space too.
LDC_CONV_CONFIGS = (  # BLOCK_N / BLOCK_K are capped to the channel counts (at least 16, tl.dot's minimum)
    {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 8, "num_stages": 4},
)
# Larger tiles (64 x 128, 128 x 64, or BLOCK_K 64 at 4 warps) spill with fp32 IEEE operands (no TF32)
# on some toolchain: not in the space.
LDC_GRAD_WEIGHT_CONFIGS = (
    {"BLOCK_O": 64, "BLOCK_I": 64, "BLOCK_P": 32, "num_warps": 8, "num_stages": 3},
    {"BLOCK_O": 32, "BLOCK_I": 32, "BLOCK_P": 64, "num_warps": 8, "num_stages": 3},
    {"BLOCK_O": 64, "BLOCK_I": 64, "BLOCK_P": 32, "num_warps": 8, "num_stages": 4},
)
LDC_PROGRAMS_PER_SM = 2
LDC_MODULATE_BLOCK_ROWS = 128
LDC_MODULATE_NUM_WARPS = 4
GRAD_WEIGHT_TARGET_PROGRAMS = 1024  # split the weight gradient's pixel reduction until about this many programs


def ldc_channel_block(channels: int, cap: int) -> int:
    """A channel block for tl.dot: a power of 2 covering `channels`, at least 16, at most `cap`."""
    return min(cap, max(16, 1 << (channels - 1).bit_length()))


# ------------------------------------------------------------------------------------------ ES2D
ES2D_NUM_WARPS = 4


def es2d_blocks(dim: int, seq_len: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_L) of the ES2D gather/scatter kernels (pure data movement: no tuning)."""
    return min(16, 1 << (dim - 1).bit_length()), min(64, 1 << (seq_len - 1).bit_length())
