"""The renderer: :class:`SyntheticRenderer` draws a film from (seed, row) and exposes it through a
scanner style; :func:`load_synthetic` joins it to the metadata table as a :class:`Source`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from scipy import ndimage

from mmsn.data.ehr_columns import SYNTHETIC_EHR
from mmsn.data.labels import NIH14_LABELS
from mmsn.data.source import Source
from mmsn.data.synthetic.anatomy import LABEL, Layers, Patient, anatomy, draw_patient, make_canvas, sample_lung
from mmsn.data.synthetic.findings import PAINTERS, paint_nuisances
from mmsn.data.synthetic.table import (
    BLANK_FRACTION,
    DEATH_PREVALENCE,
    ICU_PREVALENCE,
    read_metadata,
    resolve_csv,
    synthetic_table,
)
from mmsn.data.synthetic.templates import lung_templates, lung_templates_note
from mmsn.errors import DataError

# Bumped whenever the same (seed, row) renders another film; sweeps key their caches on it.
# 2: positioning spread of real films (shift, magnification, rotation about twice version 1's).
# 3: the spread of a mixed PA / bedside-AP population, twice version 2's: centring sd 6-7 % of the film,
#    magnification/habitus sd 14 %, rotation sd 5 deg PA / 9 deg AP (benchmarks/README.md "Signal").
RENDERER_VERSION = 3
# Scanner styles. "b" is another site: a harder exposure, a noisier and blurrier detector, and the
# collimator's unexposed margins left bright (not cropped) along the film's edges.
STYLES = {"a": "the default scanner",
          "b": "another site's scanner: contrast x1.25, gamma x0.85, 1.7x quantum noise, 1.4x blur, and "
               "bright unexposed collimation margins (2-7 % of the film) along its edges"}


# ---------------------------------------------------------------------------------- renderer
class SyntheticRenderer:
    """Picklable :data:`~mmsn.data.source.ImageGetter`: ``renderer(i, size)`` -> uint8 (size, size).

    Deterministic in (seed, i) alone: every parameter is drawn from ``default_rng([seed, i])``
    before any pixel exists, so the film is the same whatever subset or size is rendered; only the
    pixel noise uses ``default_rng([seed, i, size])``. Lung templates are module-level (not pickled).

    labels: (N, 14) int8 in NIH14_LABELS order; age: (N,) years; female, ap: (N,) bool.
    """

    def __init__(self, labels: np.ndarray, age: np.ndarray, female: np.ndarray, ap: np.ndarray,
                 seed: int, csv: str = "synthetic", style: str = "a") -> None:
        if style not in STYLES:
            raise DataError(f"synthetic: unknown scanner style {style!r}; valid: {', '.join(STYLES)}")
        self.labels, self.age, self.female, self.ap = labels, age.astype(np.float32), female, ap
        self.seed, self.csv, self.style = int(seed), csv, style

    def __call__(self, i: int, size: int) -> np.ndarray:
        if not 0 <= i < len(self.labels) or size < 8:
            raise DataError(f"{self.csv}: synthetic image of row {i} at size {size}: "
                            f"row must be in 0..{len(self.labels) - 1}, size >= 8")
        rng = np.random.default_rng([self.seed, int(i)])
        # Strengths of all 14 are drawn for every row, so the anatomy draws that follow do not
        # depend on which findings are present: labels change the film, not the patient.
        strength = rng.uniform(0.1, 1.0, len(NIH14_LABELS)) ** 1.3 * (self.labels[i] > 0)
        p = draw_patient(rng, strength, float(self.age[i]), bool(self.female[i]), bool(self.ap[i]),
                         len(lung_templates()))
        c = make_canvas(p, size)
        lay = Layers.empty(sample_lung(c))
        for name, paint in PAINTERS.items():
            if strength[LABEL[name]] > 0:
                paint(c, p, rng, float(strength[LABEL[name]]), lay)
        paint_nuisances(c, p, rng, lay)
        if self.style == "b":  # after every draw of style a, so the patient and findings stay the same
            return site_b(anatomy(c, p, lay), p, size, np.random.default_rng([self.seed, int(i), size]),
                          np.random.default_rng([self.seed, int(i), 2]))
        return expose(anatomy(c, p, lay), p, size, np.random.default_rng([self.seed, int(i), size]))


def site_b(density: np.ndarray, p: Patient, size: int, noise_rng: np.random.Generator,
           rng: np.random.Generator) -> np.ndarray:
    """Style "b" (:data:`STYLES`): the same patient on another scanner."""
    contrast, brightness, gamma = p.exposure
    other = dataclasses.replace(p, exposure=(contrast * 1.25, brightness - 0.03, gamma * 0.85),
                                noise=p.noise * 1.7, blur=p.blur * 1.4)
    img = expose(density, other, size, noise_rng).astype(np.float32)
    top, bottom, left, right = (max(1, int(round(f * size))) for f in rng.uniform(0.02, 0.07, 4))
    margin = np.zeros((size, size), dtype=bool)
    margin[:top], margin[-bottom:], margin[:, :left], margin[:, -right:] = True, True, True, True
    level = rng.uniform(215, 245)  # unexposed: bright, with the detector's own noise
    img[margin] = np.round(level + 4 * noise_rng.standard_normal(int(margin.sum())))
    return np.clip(img, 0, 255).astype(np.uint8)


def expose(density: np.ndarray, p: Patient, size: int, rng: np.random.Generator) -> np.ndarray:
    """Film: per-patient contrast/brightness/gamma (AP: lower contrast), blur, quantum noise -> uint8."""
    contrast, brightness, gamma = p.exposure
    img = np.clip(0.5 + brightness + 1.2 * contrast * (density - 0.38), 0, 1) ** gamma
    # Blur scales with size up to ~200 px (same look), then stays put so large films keep detail.
    img = ndimage.gaussian_filter(img, max(0.35, p.blur * min(size, 192) / 128))
    img = img + p.noise * rng.standard_normal(img.shape, dtype=np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def contact_sheet(source: Source, rows: np.ndarray, size: int = 128, columns: int = 4) -> np.ndarray:
    """uint8 grid of the films of ``rows`` (for eyeballing realism)."""
    tiles = [source.image(int(r), size) for r in rows]
    return np.vstack([np.hstack(tiles[k:k + columns]) for k in range(0, len(tiles), columns)])


def load_synthetic(root: Path | None, seed: int, style: str = "a") -> Source:
    """All NIH-14 metadata rows + simulated stay columns + a procedural image renderer.

    root: None (torchxrayvision's bundled ``Data_Entry_2017_v2020.csv.gz``), or another
          ``Data_Entry_2017*.csv(.gz)`` file, or a folder holding one.
    seed: drives the simulated stay columns, the blanked values and every image.
    style: the scanner (:data:`STYLES`): "a" the default, "b" another site's (dataset ``synthetic_b``).
    """
    csv = resolve_csv(root)
    meta = read_metadata(csv)
    age = meta["age"].to_numpy(np.float32)
    renderer = SyntheticRenderer(  # rendered from the values before blanking: a film still has a view
        labels=meta[list(NIH14_LABELS)].to_numpy(np.int8), age=np.where(np.isfinite(age), age, 50.0),
        female=(meta["sex"] == "F").to_numpy(), ap=(meta["view"] == "AP").to_numpy(), seed=seed, csv=str(csv),
        style=style)
    notes = {
        "rows": f"every row of the real NIH ChestX-ray14 metadata {csv.name}: age, sex, view, follow-up # "
                "and the 14 findings ('|'-separated, 'No Finding' -> all 0); ids are synthetic "
                "(image_id syn-<row>, patient_id nih-<Patient ID>), no NIH pixel is used",
        "images": f"procedural films (renderer v{RENDERER_VERSION}) rendered from (seed, row) alone: real "
                  "lung-field shapes "
                  f"({lung_templates_note()}) + heart, mediastinum, spine, ribs, clavicles, "
                  "soft tissue, vessels; each present finding leaves a trace of random strength; AP "
                  "magnifies the heart and is noisier; age lowers bone contrast; sex changes habitus",
        "stay": "SIMULATED: icu and hosp_death drawn (seeded) from a logistic model of age, AP view and "
                f"findings, calibrated to ~{ICU_PREVALENCE:.0%} ICU and ~{DEATH_PREVALENCE:.1%} death",
        "missing": f"{BLANK_FRACTION:.0%} of view and, independently, {BLANK_FRACTION:.0%} of age blanked "
                   "at random (seeded) to exercise missing values; images use the unblanked values",
        "age": "Patient Age > 120 -> missing (as in the nih14 adapter)",
        "scanner": f"style {style}: {STYLES[style]}",
    }
    name = "synthetic" if style == "a" else f"synthetic_{style}"
    return Source(name, synthetic_table(meta, seed), NIH14_LABELS, SYNTHETIC_EHR, renderer,
                  files=(str(csv),), notes=notes)


def load_synthetic_b(root: Path | None, seed: int) -> Source:
    """:func:`load_synthetic` through another site's scanner (style "b"): the transfer dataset of the
    embedded default. Sweeps prepare it without the patients of their primary cache."""
    return load_synthetic(root, seed, style="b")
