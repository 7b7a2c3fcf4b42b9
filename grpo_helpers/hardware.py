"""What this machine is good at, asked once where a choice depends on it: bf16 speed, the default device, and
giving freed memory back to the OS."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions; without them bf16 matmuls are emulated, far slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 compute beats fp32 on this device (decides the weights dtype and rollout autocast)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_fast_bf16()


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not Linux/glibc
        return None


def release_freed_memory() -> None:
    """Give the memory of freed tensors back to the OS (glibc only; elsewhere a no-op).

    glibc keeps freed heap blocks resident for reuse. A backward pass frees hundreds of MB of activations in
    pieces that sampling, which allocates differently, cannot reuse, so without this the process's resident
    memory is the sum of the phases' leftovers rather than the largest phase. Called between phases of a step.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
