"""Helpers shared by the benchmarks: timing statistics, peak memory, a stand-in source when the
synthetic generator is not available, and table printing. Imported as ``common`` because the
benchmarks run as scripts (``python benchmarks/bench_msn.py``), which puts this folder on sys.path."""

from __future__ import annotations

import ctypes
import gc
import resource
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmsn.data.ehr_columns import NIH14_EHR
from mmsn.data.labels import NIH14_LABELS
from mmsn.data.source import Source


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


# --- a stand-in for the synthetic source ---------------------------------------------------------


class RandomImages:
    """Picklable image getter: row ``i`` -> seeded uniform uint8 noise (size, size).

    Pixel content does not change the cost of a training step, so noise is a fair stand-in for
    timing; it only makes probe AUROCs meaningless (they are not what the benchmark reports).
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, i: int, size: int) -> np.ndarray:
        return np.random.default_rng([self.seed, i]).integers(0, 256, (size, size), dtype=np.uint8)


def random_source(n: int, seed: int = 0) -> Source:
    """NIH-14-shaped source (14 labels, age/sex/view/follow-up) with noise images, 2 images/patient."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({
        "image_id": [f"img{i:06d}.png" for i in range(n)],
        "patient_id": [f"p{i // 2:06d}" for i in range(n)],
        **{label: (rng.random(n) < 0.15).astype(np.int8) for label in NIH14_LABELS},
        "age": rng.uniform(20, 90, n),
        "sex": rng.choice(["F", "M"], n).astype(object),
        "view": rng.choice(["PA", "AP"], n).astype(object),
        "followup": rng.integers(0, 10, n).astype(float),
    })
    return Source("random", table, NIH14_LABELS, NIH14_EHR, RandomImages(seed),
                  notes={"images": "uniform uint8 noise (benchmark stand-in for the synthetic source)"})


def try_synthetic(seed: int = 0) -> tuple[Source | None, str]:
    """(the synthetic source, "") if ``mmsn.data.synthetic`` loads, else (None, why it did not)."""
    from mmsn.data.registry import load_source

    try:
        return load_source("synthetic", None, seed), ""
    except Exception as err:  # noqa: BLE001 - the module may be missing or half-written: any failure
        return None, f"{type(err).__name__}: {err}"


# --- timing and memory ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Seconds per call of ``n`` timed calls."""

    median: float
    minimum: float
    maximum: float
    n: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        return cls(statistics.median(seconds), min(seconds), max(seconds), len(seconds))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _read_status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    """glibc keeps freed memory mapped for reuse; ``malloc_trim(0)`` returns it to the OS (no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Resident level and per-phase peak of the process's memory, in MiB.

    CUDA: ``torch.cuda.memory_allocated`` / ``max_memory_allocated`` after
    ``reset_peak_memory_stats`` (tensors only, not the caching allocator's reserve).
    CPU: RSS; the peak is ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, whose high-water mark only
    grows, so ``reset`` writes 5 to ``/proc/self/clear_refs`` (Linux >= 4.0), which sets it back to
    the current RSS; freed heap is first handed back with ``malloc_trim`` so it does not count.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = True
        self.start_mib = 0.0

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.memory_allocated / max_memory_allocated"
        how = "reset per phase via /proc/self/clear_refs" if self.resettable else "NOT resettable: process-wide"
        return f"RSS; peak = resource.getrusage(RUSAGE_SELF).ru_maxrss ({how})"

    def level_mib(self) -> float:
        """Memory held now, after garbage collection."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.memory_allocated(self.device) / 2**20
        _malloc_trim()  # freed heap pages would otherwise count as held
        return (_read_status_kib("VmRSS") or 0) / 1024

    def reset(self) -> None:
        """Start a phase: its peak is measured from here, ``start_mib`` is the level now."""
        self.start_mib = self.level_mib()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.resettable = False

    def peak_mib(self) -> float:
        """Highest level since ``reset``."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- output --------------------------------------------------------------------------------------


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Plain fixed-width table (first column left-aligned, the rest right-aligned)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
