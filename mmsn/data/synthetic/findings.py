"""The finding painters: the trace each present NIH-14 finding leaves on a film's layers (Cardiomegaly
is the heart size drawn in ``draw_patient``), and nuisances (ECG leads, side marker, gastric bubble)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmsn.data.synthetic.anatomy import (
    HILA,
    LUNG_MID,
    Canvas,
    Layers,
    Patient,
    grid,
    ramp,
    sample_lung,
    sample_noise,
)
from mmsn.data.synthetic.templates import TEMPLATE_RES

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
