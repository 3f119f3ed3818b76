"""Lung-field templates: real lung shapes from torchxrayvision's V7 Labs masks (else parametric
super-ellipses) in the canonical frame, loaded once per process."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from mmsn.data.synthetic.table import xrv_data_dir
from mmsn.errors import DataError

MASKS_NAME = "semantic_masks_v7labs_lungs.zip"  # real lung segmentations (V7 Labs), same folder

# Geometry, in patient coordinates u (image right = patient's left), v (down), both ~[-1, 1].
LUNG_BOX = (-0.80, 0.80, -0.74, 0.58)  # canonical bounding box (u0, u1, v0, v1) of both lungs
FILL_FROM = -0.1  # template v below which lungs are filled medially (see fill_medially)
TEMPLATE_RES = 128  # canonical lung-template raster (covers u, v in [-1, 1])
MAX_TEMPLATES = 40


# ------------------------------------------------------------------------------ lung templates
@dataclass(frozen=True)
class LungTemplate:
    """A lung-field shape in the canonical frame (u, v in [-1, 1] over TEMPLATE_RES pixels).

    mask:   (R, R) float32 in [0, 1]; lateral, apical and basal borders come from a real mask,
            the medial border is left to the heart and mediastinum drawn per patient.
    bottom: (R,) float32, canonical v of the lung base per column (diaphragm and costophrenic
            angles), extended flat medially; used by effusions and by dome flattening.
    """

    mask: np.ndarray
    bottom: np.ndarray
    depth: np.ndarray  # (R, R) mask blurred: air path length, thin at the edges and apex


# (templates, where they came from): loaded once per process, lazily, never pickled.
_TEMPLATES: tuple[tuple[LungTemplate, ...], str] | None = None


def lung_templates() -> tuple[LungTemplate, ...]:
    """Real lung shapes from torchxrayvision's V7 Labs masks, else parametric super-ellipses."""
    return _load_templates()[0]


def lung_templates_note() -> str:
    """Where the lung shapes came from (for the Source notes)."""
    return _load_templates()[1]


def _load_templates() -> tuple[tuple[LungTemplate, ...], str]:
    global _TEMPLATES
    if _TEMPLATES is None:
        try:
            real = read_mask_templates(xrv_data_dir() / MASKS_NAME)
        except (OSError, zipfile.BadZipFile, DataError):
            real = ()
        if real:
            _TEMPLATES = real, f"{len(real)} masks from torchxrayvision's {MASKS_NAME}"
        else:  # different films than with the masks: the notes say so
            shapes = parametric_templates()
            _TEMPLATES = shapes, f"{len(shapes)} parametric super-ellipse shapes ({MASKS_NAME} unavailable)"
    return _TEMPLATES


def read_mask_templates(path: Path) -> tuple[LungTemplate, ...]:
    """Decode the zip's masks (sorted by name, at most MAX_TEMPLATES that pass the checks)."""
    out: list[LungTemplate] = []
    with zipfile.ZipFile(path) as archive:
        for name in sorted(n for n in archive.namelist() if not n.endswith("/")):
            try:
                mask = decode_mask(archive.read(name))
            except (OSError, ValueError):
                continue
            template = template_from_mask(mask)
            if template is not None:
                out.append(template)
            if len(out) >= MAX_TEMPLATES:
                break
    return tuple(out)


def decode_mask(data: bytes) -> np.ndarray:
    """Boolean mask from PNG/JPEG bytes, at most 256 px (JPEG artefacts cut at mid-grey)."""
    img = Image.open(io.BytesIO(data))
    img.draft("L", (256, 256))  # JPEG: decode at reduced scale, much faster
    grey = img.convert("L")
    grey.thumbnail((256, 256), Image.Resampling.NEAREST)
    return np.asarray(grey) > 127


def two_lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(right, left) boolean lungs if the mask is a clean frontal pair, else None."""
    labelled, count = ndimage.label(mask)
    if count < 2:
        return None
    sizes = np.bincount(labelled.ravel())[1:]
    a, b = np.argsort(sizes)[::-1][:2] + 1
    if sizes[b - 1] < 0.5 * sizes[a - 1] or sizes[a - 1] + sizes[b - 1] < 0.9 * sizes.sum():
        return None  # one lung missing, or fragmented
    first, second = labelled == a, labelled == b
    if np.nonzero(first)[1].mean() > np.nonzero(second)[1].mean():
        first, second = second, first  # image left = patient's right lung
    for lung in (first, second):
        rows, cols = np.nonzero(lung)
        box = (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
        if len(rows) < 0.5 * box or np.ptp(rows) < 1.2 * np.ptp(cols):  # ragged, or not upright
            return None
    return first, second


def template_from_mask(mask: np.ndarray) -> LungTemplate | None:
    """Crop both lungs to their box, scale to LUNG_BOX, fill each side to the midline."""
    pair = two_lungs(mask)
    if pair is None:
        return None
    rows, cols = np.nonzero(mask)
    crop = np.zeros(mask.shape, np.uint8)
    crop[pair[0]], crop[pair[1]] = 1, 2
    crop = crop[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    if not 0.6 < (np.ptp(rows) + 1) / (np.ptp(cols) + 1) < 1.3:  # a plausible frontal aspect
        return None
    res = TEMPLATE_RES
    to_px = lambda t: int(round((t + 1) / 2 * (res - 1)))  # noqa: E731
    u0, u1, v0, v1 = (to_px(t) for t in LUNG_BOX)
    fitted = np.asarray(Image.fromarray(crop).resize((u1 - u0 + 1, v1 - v0 + 1), Image.Resampling.NEAREST))
    canvas = np.zeros((res, res), np.uint8)
    canvas[v0:v1 + 1, u0:u1 + 1] = fitted
    return fill_medially(canvas)


def fill_medially(sides: np.ndarray) -> LungTemplate:
    """Extend each lung row below the hila to the midline, above the (medially extended) base.

    Why: the real masks stop at the heart border of *their* patient; here the heart and
    mediastinum are drawn per patient on top, so cardiomegaly can encroach on the lung field.
    Above the hila the real mediastinal border is kept (filling there would square the apices).
    """
    res = sides.shape[0]
    mid = res // 2
    cols = np.arange(res)
    lung = sides > 0
    bottom_px = (res - 1 - np.argmax(lung[::-1], axis=0)).astype(np.float64)
    # Columns whose lowest lung pixel is in the lower half reach the diaphragm; the others (only
    # apex, or none) take the base level of the nearest such column on their side.
    reaches = lung.any(axis=0) & (bottom_px > 0.6 * res)
    for half, side in ((cols < mid, 1), (cols >= mid, 2)):
        valid = np.flatnonzero(half & reaches)
        bottom_px[half] = np.interp(cols[half], valid, bottom_px[valid])
        rows_with = (sides == side).any(axis=1) & (np.arange(res) >= (FILL_FROM + 1) / 2 * (res - 1))
        lateral = np.where(rows_with, (sides == side).argmax(axis=1) if side == 1
                           else res - 1 - (sides == side)[:, ::-1].argmax(axis=1), mid)
        span = (cols[None, :] >= lateral[:, None]) & (cols[None, :] < mid) if side == 1 else \
               (cols[None, :] <= lateral[:, None]) & (cols[None, :] >= mid)
        lung |= span & rows_with[:, None] & half[None, :]
    lung &= np.arange(res)[:, None] <= bottom_px[None, :]
    soft = ndimage.gaussian_filter(lung.astype(np.float32), 0.8)
    depth = ndimage.gaussian_filter(lung.astype(np.float32), res / 20) * soft
    bottom = (bottom_px / (res - 1) * 2 - 1).astype(np.float32)
    return LungTemplate(mask=soft, bottom=bottom, depth=depth / max(float(depth.max()), 1e-6))


def parametric_templates() -> tuple[LungTemplate, ...]:
    """Fallback shapes: super-ellipse lungs with a domed base (apex narrow, base wide)."""
    res = TEMPLATE_RES
    axis = np.linspace(-1, 1, res)
    v, u = np.meshgrid(axis, axis, indexing="ij")
    out = []
    for power, taper in ((2.2, 0.45), (2.6, 0.55), (3.0, 0.5), (2.4, 0.6)):
        sides = np.zeros((res, res), np.uint8)
        for k, side in ((-1, 1), (1, 2)):
            x = (u - k * 0.42) / 0.38
            y = (v + 0.08) / 0.66
            width = taper + (1 - taper) * np.clip((y + 1) / 1.2, 0, 1)  # narrow apex
            dome = 0.86 - 0.12 * np.clip(1 - x ** 2, 0, 1)  # base higher centrally
            sides[(np.abs(x / width) ** power + np.abs(y) ** power < 1) & (y < dome)] = side
        out.append(fill_medially(sides))
    return tuple(out)
