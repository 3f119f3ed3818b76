"""The scene and normal anatomy: per-image patient draws, the pixel canvas (patient and template
frames), and the density map of tissue, bone and aerated lung that the findings' layers modify."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage

from mmsn.data.labels import NIH14_LABELS
from mmsn.data.synthetic.templates import TEMPLATE_RES, LungTemplate, lung_templates

LABEL = {name: j for j, name in enumerate(NIH14_LABELS)}

# Geometry, in patient coordinates u (image right = patient's left), v (down), both ~[-1, 1].
LUNG_MID = -0.08  # v about which lung height scales (inspiration depth)
HILA = ((-0.30, -0.10), (0.30, -0.12))  # (u, v) of the right and left hilum (patient's sides)
HEART = (0.08, 0.36, 0.36, 0.40)  # centre u, centre v, half-width, half-height of a normal heart


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
