"""Typed, frozen configuration: YAML becomes these dataclasses once, at the edge.

Every field carries its default and a comment saying what it is. Unknown keys and out-of-range
values raise ConfigError naming the dotted key (and the file it came from). Defaults are the CPU
quickstart; the paper's GPU values are given in the comments and in ``mmsn/configs/*.yaml``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from mmsn.errors import ConfigError, unknown_name


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class ViewsConfig:
    """Multi-crop views (RESEARCH.md section 1): 1 target + 1 anchor + ``n_focal`` focal views."""

    size: int = 64  # target/anchor crop side in px (paper: 224)
    focal_size: int = 32  # focal crop side in px (paper: 96)
    n_focal: int = 4  # focal views per image (paper: 10)
    global_scale: tuple[float, float] = (0.3, 1.0)  # area range of target/anchor crops
    focal_scale: tuple[float, float] = (0.05, 0.3)  # area range of focal crops
    hflip: float = 0.5  # horizontal flip probability
    jitter: float = 0.0  # brightness/contrast jitter strength (CXR-EHR-MSN turns it off)

    def __post_init__(self) -> None:
        _require(16 <= self.size <= 1024, "views.size", f"{self.size} not in 16..1024")
        _require(8 <= self.focal_size <= self.size, "views.focal_size", "must be in 8..views.size")
        _require(0 <= self.n_focal <= 16, "views.n_focal", f"{self.n_focal} not in 0..16")
        for key, (lo, hi) in (("views.global_scale", self.global_scale), ("views.focal_scale", self.focal_scale)):
            _require(0 < lo <= hi <= 1, key, f"({lo}, {hi}) must satisfy 0 < lo <= hi <= 1")
        _require(0 <= self.hflip <= 1, "views.hflip", "must be a probability")
        _require(0 <= self.jitter <= 1, "views.jitter", "must be in [0, 1]")


@dataclass(frozen=True)
class ModelConfig:
    """ViT backbone (timm) and the objective's projection head (every objective reads these sizes)."""

    backbone: str = "vit_micro"  # timm ViT name (vit_tiny_patch16_224, vit_small_patch16_224) or vit_micro/vit_nano
    patch_size: int = 0  # 0: the backbone's own; otherwise override (e.g. 8 for 64 px inputs)
    drop_path: float = 0.0  # stochastic depth rate of the backbone
    head_hidden: int = 512  # head hidden width (MSN: 2048; DINO: 2048; VICReg/MLVICX expander: 8192/4096)
    head_out: int = 128  # head output: MSN prototype dim (256); DINO bottleneck (256); VICReg output (8192)
    n_prototypes: int = 256  # K: MSN's learnable prototypes (1024); DINO's output dim (CXR-EHR-MSN: 1024)

    def __post_init__(self) -> None:
        _require(bool(self.backbone), "model.backbone", "must name a backbone")
        _require(self.patch_size >= 0, "model.patch_size", "must be >= 0")
        _require(0 <= self.drop_path < 1, "model.drop_path", "must be in [0, 1)")
        _require(self.head_hidden >= 8 and self.head_out >= 8, "model.head_hidden", "head widths must be >= 8")
        _require(2 <= self.n_prototypes <= 65536, "model.n_prototypes", "must be in 2..65536")


@dataclass(frozen=True)
class MaskConfig:
    """Token masking of anchor-side views; the CLS token is always kept."""

    ratio: float = 0.15  # fraction of patch tokens dropped (paper: 0.15 for ViT-S/16)
    per_sample: bool = True  # one random mask per sample (lightly) or one per batch (original MSN)
    focal: bool = True  # also mask focal views (lightly, CXR-EHR-MSN) or only the anchor (original)

    def __post_init__(self) -> None:
        _require(0 <= self.ratio <= 0.95, "mask.ratio", f"{self.ratio} not in [0, 0.95]")


@dataclass(frozen=True)
class EHRConfig:
    """Which EHR features are fused into pretraining, and how."""

    fusion: str = "concat_anchor"  # none | concat_anchor (the paper) | concat_both | token | film
    features: tuple[str, ...] = ("demographic",)  # groups and/or columns; "all" for every column
    embed_dim: int = 128  # EHR embedding width (paper: 128)
    hidden: int = 0  # hidden width of the EHR MLP; 0 = a single linear layer as in the paper

    def __post_init__(self) -> None:
        _require(self.embed_dim >= 1, "ehr.embed_dim", "must be >= 1")
        _require(self.hidden >= 0, "ehr.hidden", "must be >= 0")
        _require(self.fusion == "none" or len(self.features) > 0, "ehr.features",
                 "must name at least one feature when fusion != none")


@dataclass(frozen=True)
class ObjectiveConfig:
    """Which pretraining objective runs (mmsn.objectives.OBJECTIVES); its own section holds its keys."""

    name: str = "msn"  # msn | vicreg | mlvicx | dino | mae | mrm_ehr | supcon_ehr | msn_supcon

    def __post_init__(self) -> None:
        _require(bool(self.name), "objective.name", "must name an objective")


@dataclass(frozen=True)
class MSNConfig:
    """MSN (RESEARCH.md section 1): lightly's MSNLoss arguments and the EMA of the target branch."""

    temperature: float = 0.1  # anchor softmax temperature
    target_temperature: float = 0.25  # sharpening temperature of target probabilities
    sinkhorn_iterations: int = 3  # 0 disables Sinkhorn balancing
    me_max_weight: float = 1.0  # weight of the mean-entropy-maximisation term
    ema_start: float = 0.996  # EMA momentum of the target encoder at step 0
    ema_end: float = 1.0  # EMA momentum at the last step (linear)

    def __post_init__(self) -> None:
        _require(self.temperature > 0, "msn.temperature", "must be > 0")
        _require(self.target_temperature > 0, "msn.target_temperature", "must be > 0")
        _require(self.sinkhorn_iterations >= 0, "msn.sinkhorn_iterations", "must be >= 0")
        _require(0 <= self.me_max_weight <= 100, "msn.me_max_weight", "must be in [0, 100]")
        _require(0 <= self.ema_start <= self.ema_end <= 1, "msn.ema_start", "need 0 <= ema_start <= ema_end <= 1")


@dataclass(frozen=True)
class VICRegConfig:
    """VICReg (Bardes et al. 2022) on two views; the expander is model.head_hidden wide, 3 layers, and
    outputs model.head_out (paper: 8192 / 8192)."""

    sim_weight: float = 25.0  # invariance (MSE) weight (paper: 25)
    var_weight: float = 25.0  # variance hinge weight (paper: 25)
    cov_weight: float = 1.0  # covariance weight (paper: 1)
    eps: float = 1e-4  # inside the sqrt of the variance

    _section: ClassVar[str] = "vicreg"  # where error messages point (MLVICX reuses these checks)

    def __post_init__(self) -> None:
        prefix = self._section
        for key in ("sim_weight", "var_weight", "cov_weight"):
            _require(0 <= getattr(self, key) <= 1000, f"{prefix}.{key}", "must be in [0, 1000]")
        _require(0 < self.eps < 1, f"{prefix}.eps", "must be in (0, 1)")


@dataclass(frozen=True)
class MLVICXConfig(VICRegConfig):
    """MLVICX (azad6629/mlvicx): VIC(global) + multi_level_weight * VIC(multi-level). The levels are
    ViT blocks given as fractions of the depth (the paper's ResNet stages); see mmsn/objectives/mlvicx.py."""

    _section: ClassVar[str] = "mlvicx"

    multi_level_weight: float = 1.0  # lambda of the multi-level term (paper code: 1)
    levels: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # blocks at these fractions of the depth
    level_dim: int = 0  # width of each level's projection before the sum; 0 = the backbone width

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(0 <= self.multi_level_weight <= 100, "mlvicx.multi_level_weight", "must be in [0, 100]")
        _require(len(self.levels) > 0 and all(0 < f <= 1 for f in self.levels), "mlvicx.levels",
                 "fractions of the depth in (0, 1], at least one")
        _require(self.level_dim >= 0, "mlvicx.level_dim", "must be >= 0")


@dataclass(frozen=True)
class DINOConfig:
    """DINO (Caron et al. 2021), the CXR-EHR-MSN baseline: teacher = EMA of the student, centring,
    teacher-temperature warm-up, multi-crop with MSN's views (2 global to the teacher, all to the student).
    The head is model.head_hidden wide, bottleneck model.head_out, and model.n_prototypes outputs."""

    teacher_temp: float = 0.04  # teacher softmax temperature after warm-up (lightly: 0.04)
    warmup_teacher_temp: float = 0.04  # teacher temperature at epoch 0 (DINO: 0.04)
    warmup_teacher_temp_epochs: float = 0.0  # linear warm-up length (CXR-EHR-MSN: 5; DINO: 30)
    student_temp: float = 0.1  # student softmax temperature
    center_momentum: float = 0.9  # EMA of the teacher-output centre
    ema_start: float = 0.996  # teacher EMA momentum at step 0
    ema_end: float = 1.0  # at the last step (cosine, as DINO)
    freeze_last_layer_epochs: float = 0.0  # epochs without gradient steps on the last head layer (DINO: 1)

    def __post_init__(self) -> None:
        for key in ("teacher_temp", "warmup_teacher_temp", "student_temp"):
            _require(0 < getattr(self, key) <= 10, f"dino.{key}", "must be in (0, 10]")
        _require(self.warmup_teacher_temp_epochs >= 0, "dino.warmup_teacher_temp_epochs", "must be >= 0")
        _require(0 <= self.center_momentum < 1, "dino.center_momentum", "must be in [0, 1)")
        _require(0 <= self.ema_start <= self.ema_end <= 1, "dino.ema_start", "need 0 <= ema_start <= ema_end <= 1")
        _require(self.freeze_last_layer_epochs >= 0, "dino.freeze_last_layer_epochs", "must be >= 0")


@dataclass(frozen=True)
class MAEConfig:
    """MAE (He et al. 2022) and the image half of MRM: mask ratio, the light decoder, the pixel target."""

    mask_ratio: float = 0.75  # patch tokens hidden from the encoder (MAE and MRM: 0.75; CXR-EHR-MSN's MAE: 0.6)
    decoder_dim: int = 128  # decoder width (MAE: 512)
    decoder_depth: int = 2  # decoder blocks (MAE: 8)
    decoder_heads: int = 4  # decoder attention heads (MAE: 16)
    norm_pix_loss: bool = True  # MSE on per-patch standardised pixels (MAE, MRM)

    def __post_init__(self) -> None:
        _require(0 < self.mask_ratio <= 0.95, "mae.mask_ratio", f"{self.mask_ratio} not in (0, 0.95]")
        _require(self.decoder_dim >= 8 and self.decoder_dim % self.decoder_heads == 0, "mae.decoder_dim",
                 "must be >= 8 and a multiple of mae.decoder_heads")
        _require(self.decoder_depth >= 1 and self.decoder_heads >= 1, "mae.decoder_depth", "must be >= 1")


@dataclass(frozen=True)
class MRMConfig:
    """Masked record modelling on the EHR row (MRM with the EHR as the record): masked fields are predicted
    from the pooled visible image tokens plus the visible fields; missing values are never targets."""

    features: tuple[str, ...] = ("all",)  # the record's fields: EHR groups and/or columns
    record_mask: float = 0.5  # fraction of the record's fields masked per image, in (0, 1] (MRM: 0.5)
    record_weight: float = 1.0  # w in L = L_image + w * L_record (MRM: 1)
    width: int = 64  # record decoder width
    depth: int = 2  # record decoder blocks
    heads: int = 4  # record decoder attention heads

    def __post_init__(self) -> None:
        _require(len(self.features) > 0, "mrm.features", "name at least one EHR field")
        _require(0 < self.record_mask <= 1, "mrm.record_mask", f"{self.record_mask} not in (0, 1]")
        _require(0 <= self.record_weight <= 100, "mrm.record_weight", "must be in [0, 100]")
        _require(self.width >= 8 and self.width % self.heads == 0, "mrm.width",
                 "must be >= 8 and a multiple of mrm.heads")
        _require(self.depth >= 1 and self.heads >= 1, "mrm.depth", "must be >= 1")


@dataclass(frozen=True)
class SupConConfig:
    """Clinically labelled supervised contrastive learning (OLIVES): EHR columns as pseudo-labels choose
    the positives of SupCon (Khosla et al. 2020); several columns add up as a weighted sum of SupCon terms."""

    labels: tuple[str, ...] = ("sex", "age")  # EHR columns (age binned, sex, view, stay flags) or "patient"
    weights: tuple[float, ...] = ()  # one per label; empty = 1 each (OLIVES: an unweighted sum)
    bins: int = 4  # bins of a continuous column (age)
    binning: str = "quantile"  # quantile (train-split quantiles) | width (equal width)
    temperature: float = 0.07  # SupCon temperature (Khosla et al., OLIVES: 0.07)

    def __post_init__(self) -> None:
        _require(len(self.labels) > 0, "supcon.labels", "name at least one pseudo-label column")
        _require(not self.weights or len(self.weights) == len(self.labels), "supcon.weights",
                 f"give one weight per label ({len(self.labels)}) or none")
        _require(all(0 <= w <= 100 for w in self.weights), "supcon.weights", "must be in [0, 100]")
        _require(self.bins >= 2, "supcon.bins", f"{self.bins}: a binning needs at least 2 bins")
        _require(self.binning in ("quantile", "width"), "supcon.binning", "quantile | width")
        _require(0 < self.temperature <= 10, "supcon.temperature", "must be in (0, 10]")


@dataclass(frozen=True)
class MSNSupConConfig:
    """MSN + weight * SupCon on the anchor/target CLS features with EHR-defined positives."""

    weight: float = 1.0  # lambda of the SupCon term

    def __post_init__(self) -> None:
        _require(0 <= self.weight <= 100, "msn_supcon.weight", "must be in [0, 100]")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and the schedules, all pure functions of the global step (mmsn.schedules)."""

    lr: float = 1e-3  # peak learning rate after warm-up (paper ViT-S: 1e-3 at batch 1024)
    start_lr: float = 2e-4  # learning rate at step 0
    final_lr: float = 1e-6  # learning rate at the last step (cosine)
    warmup_epochs: float = 1.0  # linear warm-up length (paper: 15 of 800)
    weight_decay: float = 0.04  # start of the cosine weight-decay schedule
    final_weight_decay: float = 0.4  # end of the weight-decay schedule
    clip_grad: float = 3.0  # max grad norm; 0 disables clipping
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas

    def __post_init__(self) -> None:
        for key in ("lr", "start_lr", "final_lr"):
            _require(0 <= getattr(self, key) <= 1, f"optim.{key}", "must be in [0, 1]")
        _require(self.lr > 0, "optim.lr", "must be > 0")
        _require(self.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")
        _require(self.weight_decay >= 0 and self.final_weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _require(self.clip_grad >= 0, "optim.clip_grad", "must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """The run: length, batch, precision, logging and milestones."""

    epochs: int = 10  # pretraining epochs over the train split
    batch_size: int = 64  # images per step (per worker under DDP)
    seed: int = 0  # model init, views and masks
    num_workers: int = 0  # DataLoader worker processes
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # torch.compile each transformer block in place (GPU speed; state dicts unchanged)
    log_every: int = 10  # steps between progress lines / TensorBoard points
    checkpoint_every: int = 1  # epochs between checkpoints
    probe_every: int = 0  # epochs between linear probes during pretraining; 0 = only at the end
    max_steps_per_epoch: int = 0  # cap steps per epoch (0 = full epoch); for smoke runs

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "train.epochs", "must be >= 1")
        _require(self.batch_size >= 2, "train.batch_size", "must be >= 2 (BatchNorm in the head)")
        _require(self.num_workers >= 0, "train.num_workers", "must be >= 0")
        _require(self.precision in ("auto", "bf16", "fp32"), "train.precision", "auto | bf16 | fp32")
        _require(self.device in ("auto", "cpu", "cuda"), "train.device", "auto | cpu | cuda")
        _require(self.log_every >= 1 and self.checkpoint_every >= 1, "train.log_every", "must be >= 1")
        _require(self.probe_every >= 0 and self.max_steps_per_epoch >= 0, "train.probe_every", "must be >= 0")


PROBE_FEATURES = ("cls", "cls_mean", "last_cls")  # see ProbeConfig.features


@dataclass(frozen=True)
class ProbeConfig:
    """Linear probe on frozen target-encoder features (RESEARCH.md section 4)."""

    label_fraction: float = 1.0  # fraction of train labels used, sampled by patient (0.01, 0.1, 1.0)
    l2_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # L2 strengths tried; best on val
    bootstrap: int = 1000  # bootstrap resamples of the CIs
    batch_size: int = 256  # feature extraction batch
    seed: int = 0  # label-fraction draw and bootstrap
    # What the probe sees of a ViT: cls (final CLS token), cls_mean (CLS + mean of the final patch
    # tokens) or last_cls (the CLS of each of the last `last_blocks` blocks, each through the final
    # norm, concatenated: DINO's linear evaluation of ViTs).
    features: str = "cls"
    last_blocks: int = 4

    def __post_init__(self) -> None:
        _require(0 < self.label_fraction <= 1, "probe.label_fraction", "must be in (0, 1]")
        if self.features not in PROBE_FEATURES:
            raise ConfigError("probe.features: " + unknown_name("probe feature", self.features, PROBE_FEATURES))
        _require(self.last_blocks >= 1, "probe.last_blocks", "must be >= 1")
        _require(len(self.l2_grid) > 0 and min(self.l2_grid) >= 0, "probe.l2_grid", "non-empty, >= 0")
        _require(self.bootstrap >= 0, "probe.bootstrap", "must be >= 0")
        _require(self.batch_size >= 1, "probe.batch_size", "must be >= 1")


@dataclass(frozen=True)
class Config:
    """A whole pretraining run."""

    views: ViewsConfig = field(default_factory=ViewsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    ehr: EHRConfig = field(default_factory=EHRConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    msn: MSNConfig = field(default_factory=MSNConfig)
    vicreg: VICRegConfig = field(default_factory=VICRegConfig)
    mlvicx: MLVICXConfig = field(default_factory=MLVICXConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    mrm: MRMConfig = field(default_factory=MRMConfig)
    supcon: SupConConfig = field(default_factory=SupConConfig)
    msn_supcon: MSNSupConConfig = field(default_factory=MSNSupConConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def __post_init__(self) -> None:
        if self.objective.name not in OBJECTIVE_SECTIONS:
            raise ConfigError(unknown_name("objective.name", self.objective.name, OBJECTIVE_SECTIONS))


# objective name -> the config sections it reads. mmsn.objectives.OBJECTIVES has the same names. A config file
# may carry several objectives' sections (a recipe for each); a key *set* for a run - an override, a space
# axis, a file that also names its objective - in a section its objective does not read is an error
# (check_objective_keys), since it would silently do nothing.
OBJECTIVE_SECTIONS: dict[str, tuple[str, ...]] = {
    "msn": ("msn",),
    "vicreg": ("vicreg",),
    "mlvicx": ("mlvicx",),
    "dino": ("dino",),
    "mae": ("mae",),
    "mrm_ehr": ("mae", "mrm"),
    "supcon_ehr": ("supcon",),
    "msn_supcon": ("msn", "supcon", "msn_supcon"),
}

# objectives that read EHR targets (record fields, pseudo-labels) from the cache, independently of ehr.fusion
EHR_TARGET_OBJECTIVES = ("mrm_ehr", "supcon_ehr", "msn_supcon")

# What a run of each EHR-target objective becomes without any EHR (besides ehr.fusion none): its EHR-free
# relative, against which the analysis measures what the EHR adds. mrm_ehr is MAE plus the record target;
# msn_supcon is MSN plus SupCon; supcon_ehr with each image its own class is SimCLR's positive rule.
EHR_FREE: dict[str, dict[str, Any]] = {
    "mrm_ehr": {"objective.name": "mae"},
    "supcon_ehr": {"supcon.labels": ["image"]},
    "msn_supcon": {"objective.name": "msn"},
}


def ehr_free_overrides(objective: str) -> dict[str, Any]:
    """Dotted overrides that turn a run of ``objective`` into the same run without EHR input or target."""
    return {"ehr.fusion": "none", **EHR_FREE.get(objective, {})}

# Keys written before objectives were a config axis (loss.*, optim.ema_*) -> their place in MSN's section.
# Old YAML files, --set overrides, spaces and run directories keep loading; the old key wins when both appear.
LEGACY_KEYS: dict[str, str] = {
    "loss.temperature": "msn.temperature",
    "loss.target_temperature": "msn.target_temperature",
    "loss.sinkhorn_iterations": "msn.sinkhorn_iterations",
    "loss.me_max_weight": "msn.me_max_weight",
    "optim.ema_start": "msn.ema_start",
    "optim.ema_end": "msn.ema_end",
}


def check_objective_keys(keys: Iterable[str], *objectives: str) -> None:
    """ConfigError for the first dotted key in a section that none of ``objectives`` reads."""
    own = {s for name in objectives for s in OBJECTIVE_SECTIONS.get(name, ())}
    objective = " / ".join(objectives)
    owners: dict[str, list[str]] = {}
    for name, sections in OBJECTIVE_SECTIONS.items():
        for section in sections:
            owners.setdefault(section, []).append(name)
    for key in keys:
        section = canonical_key(key).split(".")[0]
        if section in owners and section not in own:
            raise ConfigError(f"{key}: read only by objective {' / '.join(owners[section])}, but objective.name is "
                              f"{objective!r}; drop the key or make it conditional "
                              f"(when: {{objective.name: [{owners[section][0]}]}})")


def flat_keys(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of a nested mapping: ``{"optim": {"lr": 1}}`` -> ["optim.lr"]."""
    out: list[str] = []
    for key, value in data.items():
        out += flat_keys(value, f"{prefix}{key}.") if isinstance(value, Mapping) else [f"{prefix}{key}"]
    return out


def canonical_key(dotted: str) -> str:
    """Today's name of a dotted config key (``loss.temperature`` -> ``msn.temperature``)."""
    return LEGACY_KEYS.get(dotted, dotted)


def _migrate_legacy(data: Mapping[str, Any]) -> dict[str, Any]:
    """Nested config dict with legacy keys moved to their new sections (a copy; the input is untouched)."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for old, new in LEGACY_KEYS.items():
        old_section, old_key = old.split(".")
        section = out.get(old_section)
        if isinstance(section, dict) and old_key in section:
            new_section, new_key = new.split(".")
            target = out.setdefault(new_section, {})
            if isinstance(target, dict):
                target[new_key] = section.pop(old_key)
    if isinstance(out.get("loss"), dict) and not out["loss"]:
        del out["loss"]
    return out


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check/convert one YAML value against a field type (int -> float allowed, lists -> tuples,
    ``X | None`` accepts null)."""
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        members = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None and len(members) < len(typing.get_args(kind)):
            return None
        _require(len(members) == 1, key, f"unsupported field type {kind}")
        return _coerce(value, members[0], key)
    if origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            value = (value,) if args[-1] is Ellipsis else value
        _require(isinstance(value, (list, tuple)), key, f"expected a list, got {value!r}")
        if args[-1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        _require(len(value) == len(args), key, f"expected {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if kind is float:
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        _require(is_number, key, f"expected a number, got {value!r}")
        return float(value)
    if kind is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
        return value
    if kind is bool:
        _require(isinstance(value, bool), key, f"expected true/false, got {value!r}")
        return value
    if kind is str:
        _require(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {kind}")  # pragma: no cover


def coerce(value: Any, kind: Any, key: str) -> Any:
    """``_coerce`` for other typed sections (search-space resources, data, budget): ConfigError naming ``key``."""
    return _coerce(value, kind, key)


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping; unknown keys are errors listing the valid ones."""
    _require(isinstance(data, Mapping), prefix.rstrip(".") or "config", f"expected a mapping, got {data!r}")
    if cls is Config:
        data = _migrate_legacy(data)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown key {dotted!r}; valid keys here: {', '.join(prefix + n for n in names)}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = from_dict(kind, value or {}, f"{dotted}.")  # type: ignore[arg-type]
        else:
            kwargs[key] = _coerce(value, kind, dotted)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) that ``from_dict`` reads back to an equal config."""
    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v
    return {f.name: to_dict(getattr(config, f.name)) if dataclasses.is_dataclass(getattr(config, f.name))
            else plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_dotted(d, "optim.lr", 1e-3)`` on a nested dict, creating sections as needed."""
    *path, last = dotted.split(".")
    node = data
    for part in path:
        node = node.setdefault(part, {})
        _require(isinstance(node, dict), dotted, f"{part!r} is not a section")
    node[last] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=1e-3"`` -> ("optim.lr", 0.001); values are parsed as YAML."""
    key, sep, raw = text.partition("=")
    _require(bool(sep) and bool(key), text, "expected key=value, e.g. optim.lr=1e-3")
    value = yaml.safe_load(raw)
    # YAML 1.1 reads "1e-3" as a string; numbers written that way are meant as floats.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """YAML file (optional) + ``key=value`` overrides -> Config; errors name the key and the file."""
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read config ({err})") from None
    # A file that names its objective is checked whole; otherwise only what the overrides set.
    named = isinstance(data.get("objective"), Mapping) and "name" in data["objective"]
    checked = flat_keys(data) if named else []
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(data, key, value)
        checked.append(key)
    try:
        cfg = typing.cast(Config, from_dict(Config, data))
        check_objective_keys(checked, cfg.objective.name)
        return cfg
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def flat_fields(cls: type = Config, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of a config class with its type: what search spaces are checked against."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for name, kind in ((f.name, hints[f.name]) for f in dataclasses.fields(cls)):
        if dataclasses.is_dataclass(kind):
            out.update(flat_fields(kind, f"{prefix}{name}."))  # type: ignore[arg-type]
        else:
            out[f"{prefix}{name}"] = kind
    return out


__all__ = [
    "LEGACY_KEYS",
    "OBJECTIVE_SECTIONS",
    "Config",
    "DINOConfig",
    "EHR_FREE",
    "EHR_TARGET_OBJECTIVES",
    "MAEConfig",
    "MRMConfig",
    "MSNSupConConfig",
    "SupConConfig",
    "EHRConfig",
    "MLVICXConfig",
    "MSNConfig",
    "MaskConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "ProbeConfig",
    "TrainConfig",
    "VICRegConfig",
    "ViewsConfig",
    "canonical_key",
    "check_objective_keys",
    "ehr_free_overrides",
    "coerce",
    "flat_fields",
    "flat_keys",
    "from_dict",
    "load_config",
    "to_dict",
]
