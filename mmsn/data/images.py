"""Image reading/squaring for the real-dataset adapters, plus the raw-file checks they share.

Images: :func:`read_grey` opens one PNG/JPEG as a 2-D array, :func:`to_square` turns it into the
uint8 (size, size) the cache stores, and :class:`FileImages` is the picklable getter an adapter
hands to ``prepare`` (see :data:`mmsn.data.source.ImageGetter`).

Raw files: every user-facing problem (no --root, an unreadable CSV, a missing column, a non-numeric
cell, a missing image) becomes a :class:`~mmsn.errors.DataError` naming the file, the column and
the row, so the helpers that word those messages live here, next to the image checks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from mmsn.errors import ConfigError, DataError

ASPECTS: tuple[str, ...] = ("crop", "pad")

# What torchxrayvision's dataset classes raise on a malformed CSV (a missing column, a text cell in
# a numeric column, an unexpected Path layout); anything else is a bug and should surface as such.
XRV_PARSE_ERRORS: tuple[type[Exception], ...] = (
    KeyError, TypeError, ValueError, IndexError, AttributeError, NotImplementedError,
)

# Two-step resize: an integer box reduction while the image is >= 3x the target, then bilinear.
# PIL's bilinear filter already widens its support when shrinking (it antialiases); the reducing
# gap only makes shrinking a 3000 px film to 224 px several times faster at no visible cost.
_REDUCING_GAP = 3.0


# ------------------------------------------------------------------------------------------------
# images


def read_grey(path: Path, min_size: int | None = None) -> np.ndarray:
    """Read one radiograph as a 2-D array: uint8 for 8-bit files, float32 for 16-bit/int/float ones.

    Colour (RGB/RGBA/P/CMYK) files are converted to luminance: NIH-14 ships some RGBA PNGs and
    MIMIC/CheXpert JPEGs are sometimes stored as RGB although they are grey. ``min_size`` lets
    the JPEG decoder downscale by 1/2, 1/4 or 1/8 while both sides stay >= ``min_size``; decoding
    a 3000 px MIMIC JPEG at 1/8 is several times faster and the result is then resized anyway.
    Raises :class:`DataError` naming the file when it is missing, not an image, or truncated.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            if min_size is not None and img.format == "JPEG":
                img.draft("L", (min_size, min_size))
            img.load()  # PIL decodes lazily: force it here so truncation is caught here
            return _to_array(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: unreadable image ({type(err).__name__}: {err})") from err


def _to_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return np.asarray(img).astype(np.float32)  # 16-bit / 32-bit: rescaled in to_square
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img)


def to_square(img: np.ndarray, size: int, aspect: str = "crop") -> np.ndarray:
    """Make a uint8 (size, size) image from a 2-D array (H, W).

    aspect "crop" (default) centre-crops the long side to a square, as torchxrayvision's
    ``XRayCenterCrop`` does: the pixel scale is kept and a portrait film loses only its top/bottom
    margins (neck, abdomen), not lung field; "pad" instead pads the short side with black, which
    keeps everything but shrinks the anatomy and adds borders the encoder sees as content.
    Intensity: uint8 input is used as is (the 8-bit releases are already windowed); any other
    dtype (16-bit PNGs, floats) is mapped onto 0..255 by the image's own min/max, because 16-bit
    files store 10-, 12- or 16-bit data and a fixed divisor would leave many almost black.
    """
    if aspect not in ASPECTS:
        raise ConfigError(f"aspect {aspect!r}: must be one of {', '.join(ASPECTS)}")
    if size < 1:
        raise ConfigError(f"size {size}: must be a positive number of pixels")
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"to_square needs a non-empty 2-D (H, W) image, got shape {img.shape}")
    grey = img if img.dtype == np.uint8 else _rescale(img)
    grey = _crop_square(grey) if aspect == "crop" else _pad_square(grey)
    if grey.shape == (size, size):
        return np.ascontiguousarray(grey)
    resized = Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=_REDUCING_GAP)
    return np.asarray(resized, dtype=np.uint8)


def _rescale(img: np.ndarray) -> np.ndarray:
    values = img.astype(np.float32)  # a copy: the in-place steps below never touch the caller's array
    finite = np.isfinite(values)
    all_finite = bool(finite.all())
    if not finite.any():
        return np.zeros(img.shape, np.uint8)
    lo = float(values.min() if all_finite else values[finite].min())
    hi = float(values.max() if all_finite else values[finite].max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0  # a flat image becomes black, not a division by 0
    values -= lo
    values *= scale
    if not all_finite:
        values[~finite] = 0.0
    np.clip(values + 0.5, 0, 255, out=values)  # +0.5 then truncation = round half up
    return values.astype(np.uint8)


def _crop_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return img[top:top + side, left:left + side]


def _pad_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return np.pad(img, ((top, side - h - top), (left, side - w - left)))  # zeros = black


@dataclass(frozen=True)
class FileImages:
    """Picklable :data:`~mmsn.data.source.ImageGetter`: row ``i`` -> ``to_square(read paths[i])``.

    paths:  absolute image paths, one per table row, in table order.
    aspect: "crop" or "pad", see :func:`to_square`.
    """

    paths: tuple[str, ...]
    aspect: str = "crop"

    def __post_init__(self) -> None:
        if self.aspect not in ASPECTS:
            raise ConfigError(f"aspect {self.aspect!r}: must be one of {', '.join(ASPECTS)}")
        object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))

    def __len__(self) -> int:
        return len(self.paths)

    def __call__(self, i: int, size: int) -> np.ndarray:
        path = Path(self.paths[i])
        return to_square(read_grey(path, min_size=size), size, self.aspect)


# ------------------------------------------------------------------------------------------------
# raw files: shared by nih14.py, chexpert.py and mimic.py
#
# Convention: a frame read from a CSV keeps pandas' RangeIndex, so index value k is the k-th data
# row; messages print it 1-based together with the file line (header = line 1).


def require_root(root: Path | None, dataset: str, layout: str) -> Path:
    """The raw-data folder of a real dataset, or a DataError saying --root is required."""
    if root is None:
        raise DataError(f"{dataset}: --root is required ({layout})")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{dataset}: --root {root}: no such directory ({layout})")
    return root


def row_ref(path: Path, row: int) -> str:
    """``"train.csv data row 3 (line 4)"`` for 0-based data row ``row``."""
    return f"{Path(path).name} data row {row + 1} (line {row + 2})"


def read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    """pandas.read_csv with every parse failure turned into a DataError naming the file."""
    try:
        return pd.read_csv(path, **kwargs)
    except FileNotFoundError as err:
        raise DataError(f"{path}: file not found") from err
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path}: empty file (no header)") from err
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError, ValueError) as err:
        raise DataError(f"{path}: cannot parse as CSV ({type(err).__name__}: {err})") from err


def require_columns(columns: Iterable[str], required: Sequence[str], path: Path) -> None:
    """Every name in ``required`` is a column, else a DataError naming the file and the column."""
    missing = [c for c in required if c not in set(columns)]
    if missing:
        raise DataError(f"{path}: missing required column(s) {', '.join(repr(c) for c in missing)}")


def require_rows(frame: pd.DataFrame, path: Path) -> None:
    if len(frame) == 0:
        raise DataError(f"{path}: no data rows (header only)")


def numeric_column(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """Column as float64 (blank -> NaN); a non-numeric cell is a DataError naming file, column, row."""
    raw = frame[column]
    if pd.api.types.is_numeric_dtype(raw):
        return raw.astype(np.float64)
    values = pd.to_numeric(raw, errors="coerce").astype(np.float64)
    raise_first_bad(raw, values, column, path, "is not a number")
    return values


def raise_first_bad(raw: pd.Series, parsed: pd.Series, column: str, path: Path, problem: str) -> None:
    """DataError at the first cell that is not blank in ``raw`` but missing in ``parsed``."""
    suspects = parsed.isna() & raw.notna()
    if not suspects.any():
        return
    bad = suspects & (raw.astype(str).str.strip() != "")  # whitespace-only cells are blanks, not errors
    if bad.any():
        row = int(bad.index[np.argmax(bad.to_numpy())])
        raise DataError(f"{path}: column {column!r}, {row_ref(path, row)}: {raw.loc[row]!r} {problem}")


def as_category(values: pd.Series) -> pd.Series:
    """Object column of str with None for missing (the dtype the cache's one-hot encoder expects)."""
    out = values.astype(object)
    return out.where(out.notna(), None)


def existing(paths: Sequence[str]) -> np.ndarray:
    """Boolean mask: which paths are files (one stat each; ~1 s per 100k files on a local disk)."""
    return np.fromiter((os.path.isfile(p) for p in paths), dtype=bool, count=len(paths))


def missing_image_error(csv: Path, row: int, image: str, n_missing: int, n_total: int) -> DataError:
    """The error for image files the CSV lists but the disk lacks, naming the first one."""
    return DataError(
        f"{csv}: {row_ref(csv, row)} references image {image}, which does not exist "
        f"({n_missing} of {n_total} listed images are missing; is --root the official layout?)"
    )
