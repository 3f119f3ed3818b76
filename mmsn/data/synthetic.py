"""The embedded default dataset: real NIH-14 metadata, procedurally rendered chest films.

Rows are the real NIH ChestX-ray14 entries bundled with torchxrayvision (``Data_Entry_2017_v2020``),
so age, sex, view, follow-up number and the 14 findings keep their real joint distribution and
patients keep all their images. Ids are synthetic (``syn-000123``, ``nih-<Patient ID>``).

Each image is drawn from (seed, row) alone, at the requested size directly: a frontal chest with
real lung-field shapes (lung masks shipped by torchxrayvision, jittered per patient), heart,
mediastinum, aortic knuckle, spine, trachea, diaphragm domes, ribs, clavicles, soft tissue and
breast shadows, vascular markings, then exposure, blur and quantum noise. Every present finding
leaves its own trace with a random strength (sometimes subtle), findings overlap as they do in the
real rows, and nuisance variation (positioning, habitus, inspiration, exposure, ECG leads) is large,
so a linear probe on raw pixels stays well below AUROC 1.0. AP films magnify the heart and are
noisier; age lowers bone contrast and enlarges the aortic knuckle.

The inpatient-stay group (``hosp_death``, ``icu``) is SIMULATED from age, view and findings with a
logistic model; 2 % of ``view`` and of ``age`` are blanked (seeded) to exercise missing values.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from mmsn.data.ehr_columns import SYNTHETIC_EHR
from mmsn.data.images import read_csv, require_columns
from mmsn.data.labels import NIH14_LABELS
from mmsn.data.nih14 import REQUIRED, build_table, find_csv, validate
from mmsn.data.source import Source
from mmsn.errors import DataError

CSV_NAME = "Data_Entry_2017_v2020.csv.gz"  # in torchxrayvision/data
MASKS_NAME = "semantic_masks_v7labs_lungs.zip"  # real lung segmentations (V7 Labs), same folder
LABEL = {name: j for j, name in enumerate(NIH14_LABELS)}
# Bumped whenever the same (seed, row) renders another film; sweeps key their caches on it.
# 2: positioning spread of real films (shift, magnification, rotation about twice version 1's).
# 3: the spread of a mixed PA / bedside-AP population, twice version 2's: centring sd 6-7 % of the film,
#    magnification/habitus sd 14 %, rotation sd 5 deg PA / 9 deg AP (benchmarks/README.md "Signal").
RENDERER_VERSION = 3
BLANK_FRACTION = 0.02  # of view and of age, each, blanked at random (seeded)
# Scanner styles. "b" is another site: a harder exposure, a noisier and blurrier detector, and the
# collimator's unexposed margins left bright (not cropped) along the film's edges.
STYLES = {"a": "the default scanner",
          "b": "another site's scanner: contrast x1.25, gamma x0.85, 1.7x quantum noise, 1.4x blur, and "
               "bright unexposed collimation margins (2-7 % of the film) along its edges"}
ICU_PREVALENCE, DEATH_PREVALENCE = 0.12, 0.045  # simulated stay targets (MIMIC-like inpatient mix)

# Simulated stay: log-odds added per present finding (AP films = bed-bound, sicker patients).
ICU_WEIGHTS = {"Edema": 1.4, "Pneumothorax": 1.3, "Consolidation": 1.1, "Pneumonia": 1.0,
               "Effusion": 0.9, "Cardiomegaly": 0.6, "Atelectasis": 0.5, "Emphysema": 0.4,
               "Mass": 0.4, "Infiltration": 0.3, "Hernia": 0.3, "Fibrosis": 0.3}
DEATH_WEIGHTS = {"Edema": 1.0, "Mass": 0.9, "Pneumonia": 0.8, "Consolidation": 0.7, "Effusion": 0.7,
                 "Pneumothorax": 0.6, "Fibrosis": 0.5, "Cardiomegaly": 0.4, "Emphysema": 0.3}

# Geometry, in patient coordinates u (image right = patient's left), v (down), both ~[-1, 1].
LUNG_BOX = (-0.80, 0.80, -0.74, 0.58)  # canonical bounding box (u0, u1, v0, v1) of both lungs
LUNG_MID = -0.08  # v about which lung height scales (inspiration depth)
HILA = ((-0.30, -0.10), (0.30, -0.12))  # (u, v) of the right and left hilum (patient's sides)
HEART = (0.08, 0.36, 0.36, 0.40)  # centre u, centre v, half-width, half-height of a normal heart
FILL_FROM = -0.1  # template v below which lungs are filled medially (see fill_medially)
TEMPLATE_RES = 128  # canonical lung-template raster (covers u, v in [-1, 1])
MAX_TEMPLATES = 40


# --------------------------------------------------------------------------------------- table
def xrv_data_dir() -> Path:
    """torchxrayvision's bundled data folder, found without importing it (the import pulls in torch)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or spec.origin is None:
        raise DataError("synthetic: torchxrayvision is not installed (it ships the NIH-14 metadata); "
                        "install it or pass --root pointing at a Data_Entry_2017*.csv")
    return Path(spec.origin).parent / "data"


def resolve_csv(root: Path | None) -> Path:
    """The metadata CSV: ``root`` itself, the Data_Entry_2017*.csv(.gz) in folder ``root``, or xrv's."""
    if root is None:
        return xrv_data_dir() / CSV_NAME
    root = Path(root)
    if root.is_file():
        return root
    found = find_csv(root) if root.is_dir() else None
    if found is None:
        raise DataError(f"synthetic: --root {root}: not a Data_Entry_2017*.csv(.gz) file nor a folder holding one")
    return found


def read_metadata(csv: Path) -> pd.DataFrame:
    """The NIH-14 table (same parsing and checks as the nih14 adapter): ids, 14 labels, EHR."""
    raw = read_csv(csv).rename(columns={"Patient Sex": "Patient Gender"})
    require_columns(raw.columns, REQUIRED, csv)
    validate(raw, csv)
    return build_table(raw, csv)


def intercept_for(score: np.ndarray, prevalence: float) -> float:
    """Intercept b with mean(sigmoid(score + b)) == prevalence (bisection: the mean is monotone in b)."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(score + mid)))) < prevalence:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def simulate_stay(labels: np.ndarray, age: np.ndarray, ap: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SIMULATED (icu, hosp_death) float 0/1 arrays from a logistic model of age, view and findings.

    ICU odds rise with age, AP view and acute findings (edema, pneumothorax, consolidation, ...);
    death odds rise more steeply with age, with ICU and with edema/mass/pneumonia. Intercepts are
    calibrated so ICU ~12 % and death ~4.5 % over the rows given.
    """
    rng = np.random.default_rng([seed, 7])
    age = np.where(np.isfinite(age), age, np.nanmedian(age))
    w_icu = np.array([ICU_WEIGHTS.get(n, 0.1) for n in NIH14_LABELS])
    w_death = np.array([DEATH_WEIGHTS.get(n, 0.1) for n in NIH14_LABELS])
    score = 0.02 * (age - 50) + 1.0 * ap + labels @ w_icu
    p_icu = 1 / (1 + np.exp(-(score + intercept_for(score, ICU_PREVALENCE))))
    icu = (rng.random(len(age)) < p_icu).astype(np.float64)
    score = 0.045 * (age - 50) + 0.5 * ap + labels @ w_death + 1.5 * icu
    p_death = 1 / (1 + np.exp(-(score + intercept_for(score, DEATH_PREVALENCE))))
    death = (rng.random(len(age)) < p_death).astype(np.float64)
    return icu, death


def synthetic_table(meta: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Synthetic ids, simulated stay columns and seeded blanks on top of the real NIH-14 rows."""
    table = meta.copy()
    table["image_id"] = [f"syn-{k:06d}" for k in range(len(table))]  # never the real file names
    table["patient_id"] = "nih-" + table["patient_id"].astype(str)
    labels = table[list(NIH14_LABELS)].to_numpy(np.float64)
    ap = (table["view"] == "AP").to_numpy(np.float64)
    table["icu"], table["hosp_death"] = simulate_stay(labels, table["age"].to_numpy(np.float64), ap, seed)
    rng = np.random.default_rng([seed, 11])
    blank_view, blank_age = rng.random(len(table)) < BLANK_FRACTION, rng.random(len(table)) < BLANK_FRACTION
    table["view"] = table["view"].astype(object).where(~blank_view, None)
    table["age"] = table["age"].where(~blank_age)
    return table[["image_id", "patient_id", *NIH14_LABELS, *(c.name for c in SYNTHETIC_EHR)]]


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


# ------------------------------------------------------------------------------------- scene
@dataclass
class Patient:
    """Per-image draws that are not findings: anatomy, positioning, exposure, nuisances.

    All are drawn from ``default_rng([seed, row])`` before any pixel exists, so the same film
    is rendered at every size.
    """

    template: int
    rot: float  # radians, patient rotation on the detector
    scale: float  # magnification / distance to the detector
    shift: tuple[float, float]  # (u, v) positioning offset
    lung_w: float
    lung_h: tuple[float, float]  # per side: inspiration depth, volume loss
    lung_dy: float
    flatten: float  # 0 = the template's domes, 1 = flat diaphragm (emphysema)
    heart: tuple[float, float, float, float]  # as HEART, per patient
    body_w: float
    breast: float  # 0 for men
    aorta: float  # aortic knuckle prominence (age)
    bone: float  # bone contrast (lower with age: osteopenia-like)
    ribs: tuple[float, float, float]  # phase, spacing, curvature
    clavicle_v: float
    marks: float  # vascular marking contrast
    lucency: float  # extra lung blackness (emphysema)
    exposure: tuple[float, float, float]  # contrast, brightness, gamma
    noise: float
    blur: float  # in units of a 128 px film
    ap: bool
    vessels: np.ndarray = field(repr=False)  # (64, 6) noise in (angle, radius) around the hila
    texture: np.ndarray = field(repr=False)  # (3, 14, 14) smooth noise for patchy findings


def draw_patient(rng: np.random.Generator, g: np.ndarray, age: float, female: bool, ap: bool,
                 n_templates: int) -> Patient:
    """Anatomy and film parameters; findings that change geometry act here (g: (14,) strengths)."""
    emph, cardio = g[LABEL["Emphysema"]], g[LABEL["Cardiomegaly"]]
    old = float(np.clip((age - 40) / 40, 0, 1))
    inspiration = rng.normal(1.0, 0.05) * (0.93 if ap else 1.0) * (1 + 0.1 * emph)  # AP: supine, shallow
    heart_w = HEART[2] * rng.normal(1.0, 0.07) * (1 + (0.12 + 0.33 * cardio) * (cardio > 0))
    heart_w *= (1.15 if ap else 1.0) * (1 + 0.08 * old) * (1 - 0.12 * emph)  # AP magnifies the heart
    heart = (HEART[0] + rng.normal(0, 0.03), HEART[1] + rng.normal(0, 0.03), heart_w,
             HEART[3] * rng.normal(1.0, 0.06) * (1 + 0.25 * cardio))
    return Patient(
        template=int(rng.integers(n_templates)), rot=rng.normal(0, 0.16 if ap else 0.09),
        scale=rng.normal(0.95, 0.14), shift=(rng.normal(0, 0.12), rng.normal(0.0, 0.14)),
        lung_w=rng.normal(1.0, 0.04) * (1 + 0.04 * emph) * (0.96 if female else 1.0),
        lung_h=lung_heights(rng, g, inspiration), lung_dy=rng.normal(0, 0.03),
        flatten=float(np.clip(rng.normal(0.1, 0.1) + 0.8 * emph, 0, 1)), heart=heart,
        body_w=rng.uniform(0.86, 0.95) if female else rng.uniform(0.92, 1.02),
        breast=rng.uniform(0.02, 0.07) if female and age > 14 else 0.0,
        aorta=0.02 + 0.1 * old * rng.uniform(0.5, 1.0),
        bone=float(np.clip(1.15 - 0.007 * age, 0.55, 1.1) * rng.uniform(0.75, 1.1)),
        ribs=(rng.uniform(0, 1), rng.normal(0.15, 0.012) * inspiration, rng.normal(0.75, 0.1)),
        clavicle_v=rng.normal(-0.6, 0.03) - (0.07 if ap else 0.0),
        marks=rng.uniform(0.5, 1.0) * (1 - 0.6 * emph), lucency=0.3 * emph + rng.normal(0, 0.04),
        exposure=(rng.normal(1.0, 0.1) * (0.82 if ap else 1.0), rng.normal(0.0, 0.05), rng.uniform(0.8, 1.25)),
        noise=rng.uniform(0.01, 0.03) * (1.6 if ap else 1.0), blur=rng.uniform(0.5, 1.2) * (1.2 if ap else 1.0),
        ap=ap, vessels=rng.standard_normal((64, 6)).astype(np.float32),
        texture=rng.standard_normal((3, 14, 14)).astype(np.float32))


def lung_heights(rng: np.random.Generator, g: np.ndarray, inspiration: float) -> tuple[float, float]:
    """Per-side lung height: inspiration, with volume loss from atelectasis (one side) and fibrosis."""
    h = np.full(2, inspiration) * rng.normal(1.0, 0.02, 2)
    h *= 1 - 0.07 * g[LABEL["Fibrosis"]]
    h[int(rng.integers(2))] *= 1 - 0.08 * g[LABEL["Atelectasis"]]
    return float(h[0]), float(h[1])


@lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y) float32 pixel-centre coordinates in [-1, 1]; X to the image right, Y down."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return x, y


def ramp(d: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased step of a signed distance (> 0 inside): 0 -> 1 over ``width``."""
    return np.clip(d / width + 0.5, 0.0, 1.0)


@dataclass
class Canvas:
    """Pixel coordinates of one film: patient frame (u, v) and lung-template frame (tu, tv)."""

    size: int
    px: float  # one pixel in patient units: the minimum edge width (anti-aliasing)
    u: np.ndarray
    v: np.ndarray
    tu: np.ndarray
    tv: np.ndarray
    base: np.ndarray  # template v of the lung base under each pixel
    template: LungTemplate


def make_canvas(p: Patient, size: int) -> Canvas:
    """Map every pixel to the patient frame (undo positioning) and to the lung template."""
    x, y = grid(size)
    cos, sin = np.cos(p.rot), np.sin(p.rot)
    x, y = (x - p.shift[0]) / p.scale, (y - p.shift[1]) / p.scale
    u, v = cos * x + sin * y, -sin * x + cos * y
    template = lung_templates()[p.template % len(lung_templates())]
    tu = u / p.lung_w
    tv = LUNG_MID + (v - LUNG_MID - p.lung_dy) / np.where(u < 0, p.lung_h[0], p.lung_h[1])
    axis = np.linspace(-1, 1, TEMPLATE_RES, dtype=np.float32)
    base = np.interp(tu, axis, template.bottom).astype(np.float32)
    # Flatten the domes: stretch each column's lower lung so its base drops to the lowest base level.
    lowest = float(template.bottom.max())
    stretched = LUNG_MID + (tv - LUNG_MID) * (np.maximum(base, LUNG_MID + 0.2) - LUNG_MID) / (lowest - LUNG_MID)
    tv = np.where(tv > LUNG_MID, tv + p.flatten * (stretched - tv), tv)
    return Canvas(size, 2.0 / size / p.scale, u, v, tu, tv, base, template)


def sample_lung(c: Canvas, about: tuple[float, float] | None = None, k: float = 1.0,
                depth: bool = False) -> np.ndarray:
    """Lung mask (or ``depth``) at every pixel; ``about``/``k`` shrink it towards a point."""
    tu, tv = c.tu, c.tv
    if about is not None:
        tu, tv = about[0] + (tu - about[0]) / k, about[1] + (tv - about[1]) / k
    scale = (TEMPLATE_RES - 1) / 2
    coords = np.stack([(tv + 1) * scale, (tu + 1) * scale])
    table = c.template.depth if depth else c.template.mask
    return ndimage.map_coordinates(table, coords, order=1, mode="constant", cval=0.0)


def sample_noise(c: Canvas, table: np.ndarray, zoom: float = 1.0) -> np.ndarray:
    """Smooth noise over the patient frame from a small random table (bilinear)."""
    n = table.shape[-1] - 1
    coords = np.stack([(c.v * zoom + 1.1) / 2.2 * n, (c.u * zoom + 1.1) / 2.2 * n])
    return ndimage.map_coordinates(table, coords, order=1, mode="mirror")


# ---------------------------------------------------------------------------------- anatomy
@dataclass
class Layers:
    """What findings and devices add on top of normal anatomy (all (S, S) float32).

    lung:    the lung-field mask (read only for painters).
    opacity: fraction of lung air replaced by fluid or tissue (airspace disease, effusion, masses).
    bright:  extra density anywhere (pleural line, calcification, wires).
    dark:    extra lucency anywhere (free pleural air, hernia gas, bullae).
    marks:   multiplier on vascular markings (0 = no lung markings, as beyond a pneumothorax).
    """

    lung: np.ndarray
    opacity: np.ndarray
    bright: np.ndarray
    dark: np.ndarray
    marks: np.ndarray

    @classmethod
    def empty(cls, lung: np.ndarray) -> Layers:
        zeros = np.zeros_like(lung)
        return cls(lung, zeros.copy(), zeros.copy(), zeros.copy(), np.ones_like(lung))


def soft_tissue(c: Canvas, p: Patient) -> np.ndarray:
    """Body thickness: a cylinder-like profile (bright centre, dark air outside), widening at the
    shoulders; female patients add breast shadows over the lower zones."""
    width = p.body_w * (1 + 0.25 * np.clip((-0.6 - c.v) / 0.4, 0, 1) ** 2)  # shoulders
    thick = np.sqrt(np.clip(1 - (c.u / width) ** 2, 0, 1))
    body = 0.03 + 0.52 * thick
    if p.breast > 0:  # rounded soft tissue with a sharper lower edge (inframammary fold)
        for k in (-1.0, 1.0):
            d = ((c.u - 0.58 * k * p.body_w) / 0.34) ** 2 + ((c.v - 0.36) / 0.27) ** 2
            body = body + p.breast * np.sqrt(np.clip(1 - d, 0, 1))
    return body


def heart_and_mediastinum(c: Canvas, p: Patient) -> tuple[np.ndarray, np.ndarray]:
    """(heart, mediastinum) soft masks. The heart sits 1/3 right, 2/3 left of the midline and
    merges with the diaphragm below; the superior mediastinum carries the aortic knuckle."""
    hu, hv, hw, hh = p.heart
    edge = max(c.px * 1.5, 0.012)
    du = (c.u - hu) / np.where(c.u < hu, 0.72 * hw, hw)  # right heart border nearer the midline
    dv = np.minimum(c.v - hv, 0.0) / hh  # below its widest level the heart sits on the diaphragm
    heart = ramp(1 - np.hypot(du, dv), edge / hw)
    width = 0.13 + 0.05 * ramp(c.v + 0.2, 0.4)  # widens towards the heart
    med = ramp(width - np.abs(c.u - 0.01), edge) * ramp(hv - c.v, 0.2)
    knuckle = ramp(0.06 + 0.3 * p.aorta - np.hypot(c.u - 0.14 - 0.4 * p.aorta, c.v + 0.36), edge)
    return heart, np.maximum(med, knuckle)


def bones(c: Canvas, p: Patient, lung: np.ndarray) -> np.ndarray:
    """Spine, ribs and clavicles. Posterior ribs rise laterally from the spine then curve down, the
    spaces widening caudally; anterior ribs are fainter and slope down medially; bone contrast falls
    with age. The spine is faint: it is seen through the mediastinum, not through lung."""
    x = np.abs(c.u)
    edge = max(c.px, 0.01)
    spine = ramp(0.06 - np.abs(c.u - 0.01), 0.03) * (0.7 + 0.3 * np.cos(2 * np.pi * c.v / 0.12) ** 2)
    phase, spacing, curve = p.ribs
    level = c.v + 1.0 + 0.6 * x - curve * x ** 2  # > 0 over the chest; ribs are its level lines
    post = np.cos(2 * np.pi * (np.maximum(level, 0) ** 0.8 / spacing + phase))  # ** 0.8: wider spaces lower down
    ant = np.cos(2 * np.pi * ((c.v + 0.9 * x) / (1.3 * spacing) + 0.5 * phase))
    cage = ramp(p.body_w - 0.1 - x, 0.08) * ramp(x - 0.08, 0.04) * ramp(0.55 - c.v, 0.2)
    ribs = (ramp(post - 0.3, 0.5) + 0.4 * ramp(ant - 0.4, 0.5) * ramp(x - 0.35, 0.25)) * cage
    xs = x - 0.07
    centre = p.clavicle_v - 0.2 * xs + 0.04 * np.sin(2 * np.pi * np.clip(xs / 0.7, 0, 1))  # gentle S
    clavicle = ramp(0.04 - np.abs(c.v - centre), edge) * ramp(xs, 0.02) * ramp(0.8 - x, 0.05)
    out = 0.025 * spine + p.bone * (0.05 * ribs * (0.3 + 0.7 * lung) + 0.1 * clavicle)
    if p.ap:  # scapulae project over the upper lateral lung fields on AP films
        out = out + 0.05 * ramp(x - 0.62 - 0.1 * c.v, 0.08) * ramp(0.05 - c.v, 0.15) * ramp(c.v + 0.8, 0.1)
    return out


def vessels(c: Canvas, p: Patient) -> np.ndarray:
    """Lung markings: branching vessels radiating from the hila, fading to the periphery, plus the
    hilar vessels themselves. Lines are zero crossings of noise in (angle, radius) around a hilum."""
    left = c.u >= 0
    hu = np.where(left, HILA[1][0], HILA[0][0]) * p.lung_w
    hv = np.where(left, HILA[1][1], HILA[0][1])
    du, dv = c.u - hu, c.v - hv
    r = np.hypot(du, dv)
    angle = np.arctan2(dv, np.abs(du)) + 0.08 * sample_noise(c, p.texture[1], zoom=1.5)  # tortuous
    n_angle, n_radius = p.vessels.shape
    coords = np.stack([(angle + np.pi) / (2 * np.pi) * n_angle, np.clip(r / 1.1, 0, 0.99) * (n_radius - 1)])
    noise = ndimage.map_coordinates(p.vessels, coords, order=1, mode="grid-wrap")
    lines = np.exp(-(noise * (r + 0.12) / 0.07) ** 2) * np.exp(-r / 0.45) * ramp(r - 0.1, 0.12)
    hilum = np.exp(-(du / 0.08) ** 2 - (dv / 0.14) ** 2)
    return lines + 0.6 * hilum


def anatomy(c: Canvas, p: Patient, lay: Layers) -> np.ndarray:
    """Density map (higher = whiter): tissue + bone - aerated lung, with the findings' layers."""
    heart, med = heart_and_mediastinum(c, p)
    depth = sample_lung(c, depth=True)  # air path length: lungs are greyer at edges and apex
    air = lay.lung * (1 - 0.9 * heart) * (1 - med)  # a little retrocardiac lung still shows
    air = air * (1 - np.clip(lay.opacity, 0, 1))  # fluid/tissue replaces air
    trachea = ramp(0.04 - np.abs(c.u - 0.01 - 0.03 * (c.v + 0.3)), max(c.px, 0.01)) * ramp(-0.3 - c.v, 0.08)
    density = soft_tissue(c, p) + bones(c, p, lay.lung) - 0.1 * trachea
    density = density - 0.3 * (1 + p.lucency) * air * (0.55 + 0.45 * depth)
    return density + 0.13 * p.marks * vessels(c, p) * lay.marks * air + lay.bright - lay.dark


def expose(density: np.ndarray, p: Patient, size: int, rng: np.random.Generator) -> np.ndarray:
    """Film: per-patient contrast/brightness/gamma (AP: lower contrast), blur, quantum noise -> uint8."""
    contrast, brightness, gamma = p.exposure
    img = np.clip(0.5 + brightness + 1.2 * contrast * (density - 0.38), 0, 1) ** gamma
    # Blur scales with size up to ~200 px (same look), then stays put so large films keep detail.
    img = ndimage.gaussian_filter(img, max(0.35, p.blur * min(size, 192) / 128))
    img = img + p.noise * rng.standard_normal(img.shape, dtype=np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------- findings
Painter = Callable[[Canvas, Patient, np.random.Generator, float, Layers], None]


def lung_point(c: Canvas, p: Patient, rng: np.random.Generator, side: float,
               zone: tuple[float, float] = (-0.6, 0.45)) -> tuple[float, float]:
    """A random (u, v) inside one lung (template v within ``zone``): where a lesion sits."""
    scale = (TEMPLATE_RES - 1) / 2
    tu, tv = side * 0.45, 0.0
    for _ in range(12):  # rejection sampling against the template (count independent of size)
        tu, tv = side * rng.uniform(0.12, 0.78), rng.uniform(*zone)
        if c.template.mask[int(round((tv + 1) * scale)), int(round((tu + 1) * scale))] > 0.6:
            break
    h = p.lung_h[0] if side < 0 else p.lung_h[1]
    return tu * p.lung_w, LUNG_MID + p.lung_dy + (tv - LUNG_MID) * h


def side_mask(c: Canvas, side: float) -> np.ndarray:
    return (c.u * side > 0).astype(np.float32)


def any_side(rng: np.random.Generator) -> float:
    return -1.0 if rng.random() < 0.5 else 1.0


def disk(c: Canvas, u0: float, v0: float, r: np.ndarray | float, edge: float) -> np.ndarray:
    return ramp(r - np.hypot(c.u - u0, c.v - v0), max(edge, c.px))


def patchy_noise(c: Canvas, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth noise at a lesion scale; a finding draws its own table so others are unaffected."""
    return sample_noise(c, rng.standard_normal((cells, cells)).astype(np.float32))


def paint_atelectasis(c: Canvas, p: Patient, rng: np.random.Generator, g: float, lay: Layers) -> None:
    """Atelectasis: plate-like (discoid) linear densities at a base, or a wedge of collapsed lung
    fanning from the hilum; the volume loss (a smaller hemithorax) is drawn in ``lung_heights``."""
    side = any_side(rng)
    if rng.random() < 0.6:
        for _ in range(int(rng.integers(1, 3))):
            u0, v0 = lung_point(c, p, rng, side, (0.05, 0.45))
            angle, half = rng.uniform(-0.35, 0.35), rng.uniform(0.08, 0.2)
            along = (c.u - u0) * np.cos(angle) + (c.v - v0) * np.sin(angle)
            across = -(c.u - u0) * np.sin(angle) + (c.v - v0) * np.cos(angle)
            band = ramp(0.01 + 0.02 * g - np.abs(across), c.px + 0.015) * ramp(half - np.abs(along), 0.05)
            lay.opacity += (0.35 + 0.45 * g) * band
    else:
        hu, hv = HILA[0 if side < 0 else 1]
        du, dv = c.u - hu * p.lung_w, c.v - hv
        direction = np.arctan2(rng.uniform(0.5, 1.0), side * rng.uniform(0.2, 0.8))
        off = np.abs(np.angle(np.exp(1j * (np.arctan2(dv, du) - direction))))
        wedge = ramp(0.18 + 0.25 * g - off, 0.12) * ramp(rng.uniform(0.3, 0.55) - np.hypot(du, dv), 0.1)
        lay.opacity += (0.3 + 0.45 * g) * wedge * lay.lung


def paint_effusion(c: Canvas, p: Patient, rng: np.random.Generator, g: float, lay: Layers) -> None:
    """Effusion: basal fluid blunting the costophrenic angle, its meniscus rising laterally; often
    bilateral. Supine AP films layer it posteriorly instead: a veil densest at the base."""
    for side in ((-1.0, 1.0) if rng.random() < 0.4 else (any_side(rng),)):
        depth = (0.03 + 0.3 * g) * rng.uniform(0.6, 1.0)
        if p.ap and rng.random() < 0.5:
            veil = np.clip((c.tv - c.base + 1.0) / 1.0, 0, 1) ** 1.5
            lay.opacity += (0.2 + 0.45 * g) * veil * side_mask(c, side)
            continue
        lateral = np.clip((np.abs(c.tu) - 0.25) / 0.55, 0, 1)
        level = c.base - depth * (0.35 + 1.2 * lateral ** 2)
        lay.opacity += (0.75 + 0.25 * g) * ramp(c.tv - level, 0.03) * side_mask(c, side)


def paint_blobs(c: Canvas, p: Patient, rng: np.random.Generator, count: int, radius: tuple[float, float],
                density: float, cells: int, lay: Layers) -> None:
    """Ill-defined airspace opacities: Gaussian foci broken up by lesion-scale noise."""
    tex = patchy_noise(c, rng, cells)
    for _ in range(count):
        u0, v0 = lung_point(c, p, rng, any_side(rng))
        r = rng.uniform(*radius)
        focus = np.exp(-((c.u - u0) ** 2 + (c.v - v0) ** 2) / r ** 2)
        lay.opacity += density * np.clip(focus * (1.3 + 0.8 * tex) - 0.25, 0, 1)


def paint_infiltration(c: Canvas, p: Patient, rng: np.random.Generator, g: float, lay: Layers) -> None:
    """Infiltration: several patchy, hazy, ill-defined opacities, often in both lungs."""
    paint_blobs(c, p, rng, int(rng.integers(1, 5)), (0.08, 0.2), 0.15 + 0.35 * g, 20, lay)


def paint_pneumonia(c: Canvas, p: Patient, rng: np.random.Generator, g: float, lay: Layers) -> None:
    """Pneumonia: one or two larger, denser patchy foci (bronchopneumonic consolidation)."""
    paint_blobs(c, p, rng, int(rng.integers(1, 3)), (0.14, 0.26), 0.3 + 0.45 * g, 14, lay)


def paint_consolidation(c: Canvas, p: Patient, rng: np.random.Generator, g: float, lay: Layers) -> None:
    """Consolidation: dense, homogeneous lobar opacity, sharply bounded by a fissure on one side
    (upper lobe above it, lower/middle lobe below it) and fading towards the rest of the lobe."""
    side, upper = any_side(rng), rng.random() < 0.45
    fissure = rng.normal(-0.05, 0.08) + rng.uniform(-0.15, 0.15) * c.tu * side
    lobe = ramp((fissure - c.tv) if upper else (c.tv - fissure), 0.015)
    u0, v0 = lung_point(c, p, rng, side, (-0.6, -0.1) if upper else (0.05, 0.45))
    spread = rng.uniform(0.2, 0.4)
    extent = np.exp(-((c.u - u0) ** 2 + (c.v - v0) ** 2) / spread ** 2)
    lay.opacity += (0.55 + 0.4 * g) * np.clip(1.6 * extent, 0, 1) * lobe * side_mask(c, side)


def paint_mass(c: Canvas, p: Patient, rng: np.random.Generator, g: float, lay: Layers) -> None:
    """Mass: a large (> 3 cm) round, lobulated, fairly well-defined opacity."""
    u0, v0 = lung_point(c, p, rng, any_side(rng))
    theta = np.arctan2(c.v - v0, c.u - u0)
    r = (0.055 + 0.08 * g) * (1 + 0.06 * np.sin(3 * theta + rng.uniform(0, 6)) + 0.04 * np.sin(5 * theta))
    lay.opacity += (0.55 + 0.4 * g) * disk(c, u0, v0, r, 0.02)


def paint_nodule(c: Canvas, p: Patient, rng: np.random.Generator, g: float, lay: Layers) -> None:
    """Nodule: a small (< 3 cm) round, well-defined opacity; sometimes several, sometimes calcified."""
    for _ in range(1 if rng.random() < 0.7 else int(rng.integers(2, 4))):
        u0, v0 = lung_point(c, p, rng, any_side(rng))
        spot = disk(c, u0, v0, (0.018 + 0.03 * g) * rng.uniform(0.7, 1.0), 0.008)
        lay.opacity += (0.55 + 0.4 * g) * spot
        if rng.random() < 0.2:  # calcified granuloma: denser than soft tissue
            lay.bright += 0.08 * spot


def paint_pneumothorax(c: Canvas, p: Patient, rng: np.random.Generator, g: float, lay: Layers) -> None:
    """Pneumothorax: the lung falls away from the apex and lateral wall; beyond a thin white
    visceral pleural line the hemithorax is blacker and has no vessel markings."""
    side = any_side(rng)
    hub = (side * 0.3, rng.uniform(0.1, 0.35))  # collapse towards the hilum and base
    keep = 1 - (0.06 + 0.28 * g)
    whole = lay.lung * side_mask(c, side)
    inner = sample_lung(c, hub, keep) * side_mask(c, side)
    line = np.clip(inner - sample_lung(c, hub, keep * 0.97), 0, 1) * side_mask(c, side)
    gap = np.clip(whole - inner, 0, 1)
    lay.marks *= 1 - gap
    lay.dark += (0.05 + 0.08 * g) * gap
    lay.bright += (0.15 + 0.15 * g) * line
    lay.opacity += 0.2 * g * inner  # the collapsed lung is denser


def paint_edema(c: Canvas, p: Patient, rng: np.random.Generator, g: float, lay: Layers) -> None:
    """Edema: bilateral perihilar 'bat-wing' haze with prominent upper-zone vessels; sometimes
    Kerley B lines (short horizontal lines at the lateral bases) and small effusions."""
    haze = sum(np.exp(-((c.u - hu * p.lung_w) / 0.3) ** 2 - ((c.v - hv) / 0.34) ** 2) for hu, hv in HILA)
    lay.opacity += (0.3 + 0.45 * g) * haze * (0.75 + 0.25 * sample_noise(c, p.texture[0]))
    lay.marks *= 1 + 0.5 * g
    if rng.random() < 0.5:
        kerley = ramp(np.cos(2 * np.pi * c.v / 0.045) - 0.8, 0.3) * ramp(np.abs(c.tu) - 0.6, 0.08)
        lay.opacity += 0.4 * g * kerley * ramp(c.tv - 0.1, 0.1)
    if rng.random() < 0.35:
        paint_effusion(c, p, rng, 0.3 * g, lay)


def paint_emphysema(c: Canvas, p: Patient, rng: np.random.Generator, g: float, lay: Layers) -> None:
    """Emphysema: large hyperlucent lungs with sparse markings, flat low domes and a narrow heart
    (drawn in ``draw_patient``); sometimes an apical bulla, a black space bounded by a hairline wall."""
    if rng.random() < 0.4:
        u0, v0 = lung_point(c, p, rng, any_side(rng), (-0.65, -0.3))
        r = 0.07 + 0.08 * g
        bulla = disk(c, u0, v0, r, 0.01)
        lay.marks *= 1 - bulla
        lay.dark += 0.05 * bulla
        lay.bright += 0.05 * np.clip(disk(c, u0, v0, r + 0.012, 0.006) - bulla, 0, 1)


def paint_fibrosis(c: Canvas, p: Patient, rng: np.random.Generator, g: float, lay: Layers) -> None:
    """Fibrosis: coarse reticular (net-like) lines, peripheral and basal (UIP pattern) or upper-zone,
    with volume loss (smaller lungs, drawn in ``lung_heights``)."""
    net = np.exp(-(patchy_noise(c, rng, 44) / 0.35) ** 2)
    zone = ramp(c.tv - 0.0, 0.5) if rng.random() < 0.65 else ramp(-0.25 - c.tv, 0.4)
    periphery = np.clip(np.abs(c.tu) / 0.75, 0, 1) ** 2
    lay.opacity += (0.25 + 0.45 * g) * net * zone * (0.4 + 0.6 * periphery)


def paint_pleural_thickening(c: Canvas, p: Patient, rng: np.random.Generator, g: float, lay: Layers) -> None:
    """Pleural thickening: an irregular soft-tissue band along the chest wall inside the lung edge:
    an apical cap, the lateral wall, or both."""
    side = any_side(rng)
    rim = np.clip(lay.lung - sample_lung(c, (side * 0.42, -0.05), 1 - (0.035 + 0.05 * g)), 0, 1)
    where = rng.integers(3)
    apex, lateral = ramp(-0.3 - c.tv, 0.15), ramp(np.abs(c.tu) - 0.5, 0.1)
    zone = apex if where == 0 else lateral if where == 1 else np.maximum(apex, lateral)
    wobble = np.clip(0.8 + 0.5 * patchy_noise(c, rng, 10), 0, 1)
    lay.opacity += (0.7 + 0.3 * g) * rim * zone * wobble * side_mask(c, side)


def paint_hernia(c: Canvas, p: Patient, rng: np.random.Generator, g: float, lay: Layers) -> None:
    """Hiatal hernia: a round retrocardiac soft-tissue density above the diaphragm holding a gas
    bubble with an air-fluid level."""
    u0, v0 = p.heart[0] - 0.08 + rng.normal(0, 0.03), p.heart[1] + rng.normal(0, 0.04)
    rx, ry = 0.07 + 0.06 * g, 0.06 + 0.05 * g
    inside = ramp(1 - np.hypot((c.u - u0) / rx, (c.v - v0) / ry), 0.15)
    gas = inside * ramp(v0 + ry * rng.uniform(-0.3, 0.4) - c.v, max(c.px, 0.01))
    lay.dark += (0.08 + 0.1 * g) * gas
    lay.bright += 0.05 * inside * (1 - gas)


PAINTERS: dict[str, Painter] = {
    "Atelectasis": paint_atelectasis, "Effusion": paint_effusion, "Infiltration": paint_infiltration,
    "Mass": paint_mass, "Nodule": paint_nodule, "Pneumonia": paint_pneumonia,
    "Pneumothorax": paint_pneumothorax, "Consolidation": paint_consolidation, "Edema": paint_edema,
    "Emphysema": paint_emphysema, "Fibrosis": paint_fibrosis, "Pleural_Thickening": paint_pleural_thickening,
    "Hernia": paint_hernia,
}  # Cardiomegaly is the heart size drawn in draw_patient


def paint_nuisances(c: Canvas, p: Patient, rng: np.random.Generator, lay: Layers) -> None:
    """Nuisances: ECG leads/lines (common on AP films of inpatients), a side marker, a gastric
    bubble under the left hemidiaphragm."""
    if rng.random() < 0.5:
        tu = rng.uniform(0.3, 0.55)
        v0 = LUNG_MID + p.lung_dy + (float(np.interp(tu, np.linspace(-1, 1, TEMPLATE_RES), c.template.bottom))
                                     - LUNG_MID) * p.lung_h[1] + rng.uniform(0.06, 0.12)
        bubble = ramp(1 - np.hypot((c.u - tu * p.lung_w) / rng.uniform(0.07, 0.13), (c.v - v0) / 0.06), 0.3)
        lay.dark += rng.uniform(0.03, 0.1) * bubble * (1 - lay.lung)
    for _ in range(int(rng.integers(1, 5)) if rng.random() < (0.6 if p.ap else 0.1) else 0):
        u0, v0, angle = rng.uniform(-0.7, 0.7), rng.uniform(-0.8, 0.6), rng.uniform(0, np.pi)
        along = (c.u - u0) * np.cos(angle) + (c.v - v0) * np.sin(angle)
        across = -(c.u - u0) * np.sin(angle) + (c.v - v0) * np.cos(angle) - rng.normal(0, 0.6) * along ** 2
        lay.bright += 0.2 * ramp(0.006 - np.abs(across), c.px) * ramp(rng.uniform(0.2, 0.6) - np.abs(along), 0.02)
        lay.bright += 0.2 * disk(c, u0, v0, 0.025, 0.005)  # electrode
    if rng.random() < 0.7:
        x, y = grid(c.size)
        mx, my = rng.choice([-0.85, 0.85]), rng.uniform(-0.9, -0.6)
        lay.bright += 0.5 * ramp(0.04 - np.abs(x - mx), 2 / c.size) * ramp(0.05 - np.abs(y - my), 2 / c.size)


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


def contact_sheet(source: Source, rows: np.ndarray, size: int = 128, columns: int = 4) -> np.ndarray:
    """uint8 grid of the films of ``rows`` (for eyeballing realism)."""
    tiles = [source.image(int(r), size) for r in rows]
    return np.vstack([np.hstack(tiles[k:k + columns]) for k in range(0, len(tiles), columns)])


if __name__ == "__main__":  # python -m mmsn.data.synthetic OUT.png [SEED]: 4x4 examples at 128 px
    import sys

    src = load_synthetic(None, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    picks = np.random.default_rng(1).choice(len(src.table), 16, replace=False)
    Image.fromarray(contact_sheet(src, picks)).save(sys.argv[1] if len(sys.argv) > 1 else "synthetic.png")
    for r in picks:
        row = src.table.iloc[int(r)]
        print(int(r), row["view"], row["sex"], row["age"], [n for n in NIH14_LABELS if row[n]])
