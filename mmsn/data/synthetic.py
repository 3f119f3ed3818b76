"""The embedded default dataset: real NIH-14 metadata, procedurally rendered chest films.

Rows are the real NIH ChestX-ray14 entries bundled with torchxrayvision (``Data_Entry_2017_v2020``),
so age, sex, view and the 14 findings keep their real joint distribution and patients keep their
several images. Each image is drawn from (seed, row) alone: a chest with lung fields, heart,
mediastinum and spine, diaphragm domes, ribs, clavicles and soft tissue, plus patient variation
(habitus, exposure, noise). Every finding leaves its own trace with a random strength, so some cases
are subtle and a linear probe stays well below AUROC 1.0; AP films magnify the heart and are noisier,
age lowers bone contrast and adds an aortic knuckle, female patients get breast shadows.

The inpatient-stay group (``hosp_death``, ``icu``) is SIMULATED from age, view and findings with a
logistic model; it is labelled so in meta.json. About 2 % of ``view`` and ``age`` are blanked so the
missing-value path of the EHR encoder is exercised.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mmsn.data.ehr_columns import SYNTHETIC_EHR
from mmsn.data.labels import NIH14_LABELS
from mmsn.data.source import Source

L = {name: j for j, name in enumerate(NIH14_LABELS)}
HEART = (0.24, 0.08, 0.23)  # centre y, centre x, half-height; the half-width is per patient
BLANK_FRACTION = 0.02

# Simulated stay: logit = intercept + per-finding weights + age and AP terms (AP films = sicker patients).
ICU_WEIGHTS = {"Edema": 0.9, "Effusion": 0.6, "Pneumothorax": 1.0, "Consolidation": 0.7, "Pneumonia": 0.6,
               "Atelectasis": 0.3, "Infiltration": 0.2}
DEATH_WEIGHTS = {"Edema": 0.6, "Mass": 0.5, "Pneumonia": 0.5, "Effusion": 0.4, "Consolidation": 0.3}


def load_synthetic(root: Path | None, seed: int) -> Source:
    """All NIH-14 rows with simulated stay columns and a renderer; ``root`` may point to another
    ``Data_Entry_2017*.csv`` (or a folder holding one), default: torchxrayvision's bundled CSV."""
    from mmsn.data.nih14 import build_table, find_csv, read_entries

    csv = None if root is None else (root if root.is_file() else find_csv(root))
    entries, csv_file = read_entries(root.parent if root is not None and root.is_file() else Path("."), csv)
    table = build_table(entries, csv_file)
    table["image_id"] = [f"syn-{k:06d}" for k in range(len(table))]  # not the real file names
    table["patient_id"] = "nih-" + table["patient_id"].astype(str)
    rng = np.random.default_rng([seed, 7])
    table["icu"], table["hosp_death"] = simulate_stay(table, rng)
    blank_view = rng.random(len(table)) < BLANK_FRACTION
    blank_age = rng.random(len(table)) < BLANK_FRACTION
    table["view"] = table["view"].astype(object).where(~blank_view, None)
    table["age"] = table["age"].where(~blank_age)
    table = table[["image_id", "patient_id", *NIH14_LABELS, *(c.name for c in SYNTHETIC_EHR)]]
    renderer = SyntheticRenderer(
        labels=table[list(NIH14_LABELS)].to_numpy(np.int8), age=table["age"].to_numpy(np.float32),
        female=(table["sex"] == "F").to_numpy(), ap=(table["view"] == "AP").to_numpy(), seed=seed)
    notes = {
        "rows": f"real NIH-14 metadata rows of {csv_file.name} (age, sex, view, follow-up, 14 findings)",
        "images": "rendered procedurally from (seed, row): chest anatomy + one visible trace per finding "
                  "with random strength; AP magnifies the heart; age and sex change appearance",
        "stay": "SIMULATED: icu and hosp_death drawn from a logistic model of age, view and findings",
        "missing": f"{BLANK_FRACTION:.0%} of view and of age blanked at random (seeded) to exercise missing values",
    }
    return Source("synthetic", table, NIH14_LABELS, SYNTHETIC_EHR, renderer, files=(str(csv_file),), notes=notes)


def simulate_stay(table: pd.DataFrame, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(icu, hosp_death) float 0/1 arrays; ICU ~10-15 %, death ~3-6 % at NIH-14's case mix."""
    age = table["age"].fillna(table["age"].mean()).to_numpy(float)
    ap = (table["view"] == "AP").to_numpy(float)
    logit_icu = -2.9 + 1.0 * ap + 0.015 * (age - 50)
    for name, w in ICU_WEIGHTS.items():
        logit_icu = logit_icu + w * table[name].to_numpy(float)
    icu = (rng.random(len(table)) < 1 / (1 + np.exp(-logit_icu))).astype(float)
    logit_death = -3.8 + 0.035 * (age - 50) + 1.2 * icu + 0.3 * ap
    for name, w in DEATH_WEIGHTS.items():
        logit_death = logit_death + w * table[name].to_numpy(float)
    death = (rng.random(len(table)) < 1 / (1 + np.exp(-logit_death))).astype(float)
    return icu, death


@lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) float32 coordinates in [-1, 1], y down, x to the image's right (the patient's left)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.meshgrid(axis, axis, indexing="ij")  # type: ignore[return-value]


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Gaussian noise on a cells x cells lattice, bicubically upsampled: texture at a chosen scale."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.BICUBIC))


def soft(d: np.ndarray, width: float) -> np.ndarray:
    """Smooth step of a signed distance (> 0 inside): anti-aliased region edges."""
    return 1.0 / (1.0 + np.exp(-np.clip(d / width, -30, 30)))


def blob(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return np.exp(-(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2))


@dataclass
class Patient:
    """Per-image draws: anatomy, exposure and the strength of each present finding (0 if absent)."""

    strength: np.ndarray  # (14,) in [0, 1]
    side: np.ndarray  # (14,) -1 / +1: which lung a one-sided finding affects
    lung: float  # lung size factor
    heart: float  # heart half-width
    shift: float  # horizontal positioning offset
    gain: float
    offset: float
    noise: float
    bone: float  # rib/clavicle contrast (osteopenia with age)
    female: bool
    ap: bool
    old: float  # 0..1, drives the aortic knuckle


class SyntheticRenderer:
    """Picklable ImageGetter: ``renderer(i, size)`` -> uint8 (size, size), deterministic in (seed, i)."""

    def __init__(self, labels: np.ndarray, age: np.ndarray, female: np.ndarray, ap: np.ndarray, seed: int) -> None:
        self.labels, self.age, self.female, self.ap, self.seed = labels, age, female, ap, seed

    def patient(self, i: int, rng: np.random.Generator) -> Patient:
        present = self.labels[i].astype(bool)
        strength = np.where(present, rng.uniform(0.2, 1.0, 14), 0.0)
        age = float(self.age[i]) if np.isfinite(self.age[i]) else 50.0
        ap = bool(self.ap[i])
        emph = strength[L["Emphysema"]]
        heart = 0.27 * rng.normal(1.0, 0.07) * (1 + 0.4 * strength[L["Cardiomegaly"]]) * (1.12 if ap else 1.0)
        return Patient(
            strength=strength, side=rng.choice([-1.0, 1.0], 14), lung=rng.normal(1.0, 0.05) * (1 + 0.1 * emph),
            heart=heart * (1 + 0.002 * max(age - 50, 0)), shift=rng.normal(0, 0.03), gain=rng.normal(1.0, 0.1),
            offset=rng.normal(0, 0.05), noise=rng.uniform(0.02, 0.05) * (1.4 if ap else 1.0),
            bone=float(np.clip(1.2 - 0.008 * age, 0.4, 1.1)) * rng.uniform(0.7, 1.1),
            female=bool(self.female[i]), ap=ap, old=float(np.clip((age - 55) / 30, 0, 1)))

    def __call__(self, i: int, size: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(i)])
        p = self.patient(i, rng)
        y, x = grid(size)
        x = x - p.shift
        lungs, sides = lung_fields(y, x, p, size)
        img = anatomy(y, x, p, lungs, rng, size)
        img = img + findings(y, x, p, lungs, sides, rng, size)
        return expose(img, p, rng)


def lung_fields(y: np.ndarray, x: np.ndarray, p: Patient, size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Soft masks of both lungs (apex tapered, dome-shaped base, medial edge cut by the heart)."""
    edge = 2.5 / size
    sides = []
    for k in (-1.0, 1.0):
        cx, a, b = 0.4 * k, 0.31 * p.lung, 0.62 * p.lung
        taper = 0.5 + 0.5 * np.clip((y + b - 0.05) / (0.8 * b), 0, 1)  # narrower towards the apex
        inside = 1 - (np.abs(x - cx) / (a * taper)) ** 2.6 - (np.abs(y + 0.04) / b) ** 2.6
        flat = 1 + p.strength[L["Emphysema"]]  # emphysema flattens and lowers the domes
        dome = 0.42 * p.lung - (0.10 / flat) * np.clip(1 - ((x - cx) / a) ** 2, 0, 1) + 0.04 * (flat - 1)
        if p.strength[L["Atelectasis"]] and p.side[L["Atelectasis"]] == k:  # volume loss lifts the dome
            dome = dome - 0.06 * p.strength[L["Atelectasis"]]
        heart = ((x - HEART[1]) / p.heart) ** 2 + ((y - HEART[0]) / HEART[2]) ** 2 - 1
        sides.append(soft(inside, edge * 3) * soft(dome - y, edge) * soft(heart, edge * 4))
    return sides[0] + sides[1], sides


def anatomy(y: np.ndarray, x: np.ndarray, p: Patient, lungs: np.ndarray, rng: np.random.Generator,
            size: int) -> np.ndarray:
    """Body, heart, mediastinum, spine, ribs, clavicles, breasts and vessels; brightness ~ density."""
    edge = 2.5 / size
    body_w = 0.93 * (0.96 if p.female else 1.03)
    img = 0.06 + 0.42 * soft(1 - np.abs(x / body_w) ** 3 - np.abs((y - 0.1) / 1.3) ** 3, edge * 3)
    img = img + 0.12 * soft(y - 0.45, 0.05)  # abdomen below the diaphragm
    img = img + 0.14 * soft(1 - ((x - HEART[1]) / p.heart) ** 2 - ((y - HEART[0]) / HEART[2]) ** 2, edge * 3)
    img = img + 0.2 * soft(0.09 + 0.03 * p.old - np.abs(x), edge * 2) * soft(0.35 - y, 0.05)
    img = img + 0.12 * p.old * blob(y, x, -0.32, -0.1, 0.06, 0.06)  # aortic knuckle
    img = img + 0.08 * soft(0.055 - np.abs(x), edge)  # spine, seen through the heart
    ribs = np.sin(2 * np.pi * (5.5 * (y + 0.35 * x ** 2) + 0.2 * np.abs(x)))
    ribs = soft(ribs - 0.55, 0.15) * soft(0.9 - np.abs(x), 0.05) * soft(0.5 - y, 0.05)
    img = img + 0.08 * p.bone * ribs * (0.35 + 0.65 * lungs)  # ribs show best against aerated lung
    clav = np.abs(y - (-0.62 + 0.22 * np.abs(x) - 0.1 * x ** 2)) - 0.03
    img = img + 0.15 * p.bone * soft(-clav, edge * 2) * soft(np.abs(x) - 0.08, 0.02) * soft(0.7 - np.abs(x), 0.03)
    if p.female:
        img = img + 0.1 * (blob(y, x, 0.4, -0.42, 0.2, 0.25) + blob(y, x, 0.4, 0.42, 0.2, 0.25))
    if p.ap:  # scapulae project over the lateral lung fields on AP films
        img = img + 0.07 * soft(np.abs(x) - 0.62, 0.04) * soft(0.1 - y, 0.1)
    vessels = np.abs(smooth_noise(rng, size, max(6, size // 5))) * blob(y, x, 0.05, 0.0, 0.6, 0.45)
    return img - 0.3 * lungs + 0.06 * vessels * lungs


def _point_in_lung(rng: np.random.Generator, side: float, low: float = -0.4, high: float = 0.3) -> tuple[float, float]:
    return float(rng.uniform(low, high)), float(side * rng.uniform(0.22, 0.5))


def findings(y: np.ndarray, x: np.ndarray, p: Patient, lungs: np.ndarray, sides: list[np.ndarray],
             rng: np.random.Generator, size: int) -> np.ndarray:
    """Sum of the traces of every present finding (added density; negative = more lucent)."""
    out = np.zeros_like(y)
    for name, draw in TRACES.items():
        s = p.strength[L[name]]
        if s > 0:
            side = sides[0] if p.side[L[name]] < 0 else sides[1]
            out = out + draw(y, x, s, float(p.side[L[name]]), lungs, side, rng, size)
    return out


def _effusion(y, x, s, k, lungs, side, rng, size):  # type: ignore[no-untyped-def]
    """Costophrenic blunting: fluid fills the base, meniscus rising laterally; sometimes bilateral."""
    both = rng.random() < 0.4
    region = lungs if both else side
    level = 0.42 - (0.03 + 0.18 * s) - 0.12 * s * np.clip(np.abs(x) - 0.25, 0, 1)
    return 0.2 * (0.3 + 0.7 * s) * region * soft(y - level, 0.03)


def _opacity_blob(radius: tuple[float, float], amp: float, count: int = 1):  # type: ignore[no-untyped-def]
    def draw(y, x, s, k, lungs, side, rng, size):  # type: ignore[no-untyped-def]
        out = np.zeros_like(y)
        for _ in range(count if count == 1 else int(rng.integers(1, count + 1))):
            cy, cx = _point_in_lung(rng, k if rng.random() < 0.7 else -k)
            r = rng.uniform(*radius)
            out = out + amp * (0.4 + 0.6 * s) * blob(y, x, cy, cx, r, r) * lungs
        return out
    return draw


def _patchy(cells: int, amp: float, local: float | None):  # type: ignore[no-untyped-def]
    """Patchy airspace opacities (infiltration everywhere; pneumonia localised around one focus)."""
    def draw(y, x, s, k, lungs, side, rng, size):  # type: ignore[no-untyped-def]
        patches = np.clip(smooth_noise(rng, size, cells) - 0.3, 0, None)
        where = lungs if local is None else blob(y, x, *_point_in_lung(rng, k), local, local) * lungs
        return amp * s * patches * where
    return draw


def _pneumothorax(y, x, s, k, lungs, side, rng, size):  # type: ignore[no-untyped-def]
    """Collapsed lung edge: lucent rim without markings at the apex/lateral side, a thin pleural line."""
    inner = 1 - ((x - 0.37 * k * 0.85) / (0.22 - 0.08 * s)) ** 2 - ((y + 0.05) / (0.55 - 0.15 * s)) ** 2
    rim = side * soft(-inner, 0.03)
    line = side * np.exp(-(inner / 0.04) ** 2)
    return -0.12 * s * rim + 0.1 * s * line


def _atelectasis(y, x, s, k, lungs, side, rng, size):  # type: ignore[no-untyped-def]
    """Plate-like linear density at a base (plus the raised dome drawn in lung_fields)."""
    tilt = rng.uniform(-0.3, 0.3)
    band = np.exp(-((y - 0.25 - tilt * (x - 0.37 * k)) / (0.025 + 0.03 * s)) ** 2)
    return 0.3 * s * band * side


def _consolidation(y, x, s, k, lungs, side, rng, size):  # type: ignore[no-untyped-def]
    """Dense lobar opacity bounded by a fissure-like straight edge."""
    upper = rng.random() < 0.4
    cut = rng.uniform(-0.15, 0.15)
    lobe = soft((cut - y) if upper else (y - cut), 0.04)
    return 0.3 * (0.5 + 0.5 * s) * lobe * side


def _edema(y, x, s, k, lungs, side, rng, size):  # type: ignore[no-untyped-def]
    """Bilateral perihilar 'bat-wing' haze."""
    haze = blob(y, x, 0.0, -0.22, 0.3, 0.22) + blob(y, x, 0.0, 0.22, 0.3, 0.22)
    return 0.18 * s * haze * lungs


def _emphysema(y, x, s, k, lungs, side, rng, size):  # type: ignore[no-untyped-def]
    """Hyperlucent lungs (size and flat domes are in lung_fields)."""
    return -0.08 * s * lungs


def _fibrosis(y, x, s, k, lungs, side, rng, size):  # type: ignore[no-untyped-def]
    """Reticular texture, basal and peripheral."""
    net = np.abs(smooth_noise(rng, size, max(8, size // 3)))
    where = lungs * soft(y - 0.0, 0.15) * soft(np.abs(x) - 0.25, 0.08)
    return 0.18 * s * np.clip(net - 0.6, 0, None) * where


def _pleural_thickening(y, x, s, k, lungs, side, rng, size):  # type: ignore[no-untyped-def]
    """Bright rim along the lateral chest wall of one lung."""
    rim = side * (1 - side) * 4  # peaks on the lung's soft edge
    return 0.25 * s * rim * soft(k * x - 0.3, 0.05)


def _hernia(y, x, s, k, lungs, side, rng, size):  # type: ignore[no-untyped-def]
    """Retrocardiac hiatal hernia: round density with a gas bubble."""
    r = 0.06 + 0.05 * s
    return 0.25 * blob(y, x, 0.33, 0.02, r, r * 1.2) - 0.15 * blob(y, x, 0.3, 0.02, r * 0.4, r * 0.6)


TRACES = {
    "Effusion": _effusion,
    "Mass": _opacity_blob((0.07, 0.13), 0.3),
    "Nodule": _opacity_blob((0.025, 0.045), 0.35, count=3),
    "Infiltration": _patchy(6, 0.22, None),
    "Pneumonia": _patchy(8, 0.35, 0.16),
    "Pneumothorax": _pneumothorax,
    "Atelectasis": _atelectasis,
    "Consolidation": _consolidation,
    "Edema": _edema,
    "Emphysema": _emphysema,
    "Fibrosis": _fibrosis,
    "Pleural_Thickening": _pleural_thickening,
    "Hernia": _hernia,
}  # Cardiomegaly is the heart size drawn in Patient/anatomy


def expose(img: np.ndarray, p: Patient, rng: np.random.Generator) -> np.ndarray:
    """Film exposure: gain/offset/gamma per patient, lower contrast on AP, quantum noise; -> uint8."""
    contrast = 0.85 if p.ap else 1.0
    img = (img - 0.4) * contrast * p.gain + 0.4 + p.offset
    img = np.clip(img, 0, 1) ** rng.uniform(0.85, 1.15)
    img = img + p.noise * rng.standard_normal(img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


if __name__ == "__main__":  # python -m mmsn.data.synthetic OUT.png: a 4x4 grid of examples at 128 px
    import sys

    src = load_synthetic(None, 0)
    rows = np.random.default_rng(1).choice(len(src.table), 16, replace=False)
    tiles = [src.image(int(r), 128) for r in rows]
    sheet = np.vstack([np.hstack(tiles[k:k + 4]) for k in range(0, 16, 4)])
    Image.fromarray(sheet).save(sys.argv[1] if len(sys.argv) > 1 else "synthetic.png")
    for r in rows:
        present = [n for n in NIH14_LABELS if src.table[n].iloc[r]]
        print(int(r), src.table["view"].iloc[r], src.table["sex"].iloc[r], present)
