"""Where the host memory a step frees goes: back to the kernel (the C library's default) or kept
in the process for the next step (`vit-train --host_memory=keep`, `keep_freed_memory()`).

XLA:CPU allocates a step's temporaries afresh at every call, in one block as large as the step
needs (ViT-S/16 at batch 32: 3.7 GB). glibc's malloc serves a block over 32 MiB with mmap and
unmaps it when freed, so every step page-faults all of it in again: ~960,000 faults per step,
each zero-filled by the kernel, which took 3-8 s of kernel CPU time per ~7 s step on a 2-core
virtual machine, and up to 20 s right after another process had churned through memory.
`keep` makes malloc keep what is freed: large blocks come from the heap instead of mmap, the
heap is never trimmed, and every thread shares the main arena (a thread's own arena serves a
block it cannot hold with mmap regardless). After the first few steps, while the heap
settles, a step faults nothing.

The price: the process holds its peak host memory until it exits, and all threads take one
malloc lock, which slows steps that allocate many small blocks. Measured on that machine (see
README "Results"): ViT-S/16 trained 1.13-1.29x faster with `keep`, the small digits config
0.78-0.87x as fast. Hence `system` stays the default. On a GPU or TPU the step's temporaries
live on the device, and `keep` only costs.

glibc only (Linux), and only while the process has one malloc arena: threads pick theirs when
they first allocate, so JAX's (started with its backend) and those of libraries that run
threads must come later. Choose it first thing in the process, as `vit-train` does. A Jupyter
kernel has threads of its own before any cell runs: there, start the kernel with
`GLIBC_TUNABLES=glibc.malloc.arena_max=1` in its environment (its kernel spec, or the shell that
starts Jupyter), then call `keep_freed_memory()` before anything uses JAX.
"""

from __future__ import annotations

import ctypes
import platform

POLICIES = ("system", "keep")

# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8

# Whether this process has kept freed memory since: malloc's settings are the process's
# state, and a second run in the same process (a notebook) finds them already made.
_kept = False


def malloc_arenas() -> int:
    """How many malloc arenas the process has (malloc_info(3) lists one <heap> per arena)."""
    libc = ctypes.CDLL(None)
    libc.open_memstream.restype = ctypes.c_void_p
    libc.open_memstream.argtypes = [
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    text, size = ctypes.c_char_p(), ctypes.c_size_t()
    stream = libc.open_memstream(ctypes.byref(text), ctypes.byref(size))
    if not stream:
        raise RuntimeError("open_memstream(3) failed")
    try:
        written = libc.malloc_info(0, stream)
    finally:
        libc.fclose(stream)  # sets text and size
    try:
        if written != 0:
            raise RuntimeError("malloc_info(3) failed")
        return ctypes.string_at(text, size.value).decode().count("<heap nr=")
    finally:
        libc.free(text)


def keep_freed_memory() -> None:
    """Sets glibc's malloc to keep freed memory for reuse (see the module docstring): one
    arena, no mmap for large blocks, no trimming. Process-wide and for the rest of its life.
    Raises ValueError where it cannot work: another C library, or threads that already have
    malloc arenas of their own (JAX's backend started, unless an earlier call made these
    settings first)."""
    global _kept
    if _kept:
        return
    libc_name = platform.libc_ver()[0]
    if libc_name != "glibc":
        raise ValueError(
            f"host_memory='keep' needs glibc's malloc (Linux); this Python runs on "
            f"{libc_name or platform.system()}: set host_memory='system'."
        )
    arenas = malloc_arenas()
    if arenas > 1:
        raise ValueError(
            f"host_memory='keep' must be chosen before any other thread allocates (this process "
            f"has {arenas} malloc arenas already; JAX's backend makes them when it starts): "
            "choose it first thing in the process (vit-train --host_memory=keep does; for a "
            "Jupyter kernel, which starts threads of its own, set GLIBC_TUNABLES=glibc.malloc."
            "arena_max=1 in its environment, then call keep_freed_memory() before anything "
            "uses JAX), or keep host_memory='system'."
        )
    libc = ctypes.CDLL(None)
    for parameter, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1)):
        # -1 for the trim threshold is SIZE_MAX once glibc reads it as size_t: never trim
        if libc.mallopt(parameter, value) != 1:
            raise RuntimeError(f"glibc refused mallopt({parameter}, {value})")
    _kept = True


def apply(policy: str) -> None:
    """Applies a --host_memory choice: `system` changes nothing, `keep` calls
    `keep_freed_memory`."""
    if policy not in POLICIES:
        raise ValueError(f"host_memory={policy!r} is not one of {POLICIES}.")
    if policy == "keep":
        keep_freed_memory()
