"""``serve.precision``: how the catalogue is scored, and what "auto" picks on the machine at hand.

bf16 candidates with an exact fp32 re-rank (``recsys_core.serving.score``) pay only where bf16
products run natively: a CUDA GPU with bf16, or a CPU with AVX-512 BF16 or AMX. Elsewhere torch
emulates the bf16 GEMM, which measured about 40x slower than fp32 on a 2-core AVX2 CPU (2.7 against
112 GFLOP/s; see ``benchmarks/bench_scoring.py``), so "auto" scores in fp32 there. The published
lists are the exact fp32 top-K with either precision.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]
PrecisionSetting = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")
# /proc/cpuinfo flags of CPUs that multiply bf16 natively (torch reports only AVX2/AVX512).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def resolve_precision(setting: str, device: torch.device | str = "cpu") -> Precision:
    """The precision to score with on ``device``: ``setting`` itself, or for "auto" bf16 where it
    runs natively (``native_bf16``) and fp32 elsewhere."""
    if setting == "auto":
        return "bf16" if native_bf16(torch.device(device)) else "fp32"
    if setting not in PRECISIONS:
        raise ValueError(f"serve.precision must be 'auto' or one of {PRECISIONS}, got {setting!r}")
    return setting


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 natively: a CUDA GPU that supports bf16, or a CPU whose
    flags name AVX-512 BF16 or AMX (read from /proc/cpuinfo; False where it cannot be read)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(cpu_flags() & BF16_CPU_FLAGS)


@cache
def cpu_flags() -> frozenset[str]:
    """The first processor's flags in /proc/cpuinfo (empty where there is none, e.g. not Linux)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()
