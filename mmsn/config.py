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
from typing import Any

import yaml

from mmsn.errors import ConfigError, unknown_name


def require(ok: bool, key: str, message: str) -> None:
    """ConfigError ``key: message`` unless ``ok``: the range check of every config section."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


_require = require


@dataclass(frozen=True)
class ViewsConfig:
    """Multi-crop views (docs/method.md, Views): 1 target + 1 anchor + ``n_focal`` focal views."""

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
    grad_checkpointing: bool = False  # recompute each block's activations in backward (memory for compute)
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


@dataclass(frozen=True)
class ObjectiveConfig:
    """Which pretraining objective runs (mmsn.objectives.SPECS); its own section holds its keys."""

    name: str = "msn"  # msn | vicreg | mlvicx | dino | mae | mrm_ehr | supcon_ehr | msn_supcon | byol

    def __post_init__(self) -> None:
        _require(bool(self.name), "objective.name", "must name an objective")


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
    """Linear probe on frozen target-encoder features (docs/evaluation.md, The linear probe)."""

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


# The core sections of every run, in the order a config file lists them; the objectives' own sections
# (``msn``, ``dino``, ...) come after ``objective`` (see objective_sections).
CORE = ("views", "model", "mask", "ehr", "objective", "optim", "train", "probe")


def objective_sections() -> dict[str, type]:
    """Section name -> dataclass of every objective's own config section, as the objectives declare them
    (mmsn.objectives.SPECS). Imported here, not at the top: the objectives import this module."""
    from mmsn.objectives import SPECS

    return {spec.section: spec.config for spec in SPECS.values() if spec.section and spec.config}


def _default_sections() -> dict[str, Any]:
    return {name: cls() for name, cls in objective_sections().items()}


@dataclass(frozen=True)
class Config:
    """A whole pretraining run: the core sections, and every objective's own section (a recipe for each;
    only the running objective's are read), reached as attributes: ``cfg.msn.temperature``."""

    views: ViewsConfig = field(default_factory=ViewsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    ehr: EHRConfig = field(default_factory=EHRConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    sections: Mapping[str, Any] = field(default_factory=_default_sections)  # objective sections by name

    def __post_init__(self) -> None:
        from mmsn.objectives import SPECS

        if self.objective.name not in SPECS:
            raise ConfigError(unknown_name("objective.name", self.objective.name, SPECS))
        missing = set(objective_sections()) - set(self.sections)
        if missing:  # built by hand with only some sections: the others take their defaults
            object.__setattr__(self, "sections", {**_default_sections(), **self.sections})

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: an objective's section. ``__dict__`` is read directly so
        # that unpickling (which looks up attributes before the fields exist) gets a plain AttributeError.
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__} has no section {name!r}")


def objective_spec(name: str) -> Any:
    """The ObjectiveSpec of objective ``name`` (ConfigError listing the known ones)."""
    from mmsn.objectives import SPECS

    if name not in SPECS:
        raise ConfigError(unknown_name("objective.name", name, SPECS))
    return SPECS[name]


def ehr_free_overrides(objective: str) -> dict[str, Any]:
    """Dotted overrides that turn a run of ``objective`` into the same run without EHR input or target:
    no fusion, and the objective's own EHR-free counterpart (its spec's ``ehr_free``)."""
    from mmsn.models.fusion import NO_FUSION

    return {"ehr.fusion": NO_FUSION, **objective_spec(objective).ehr_free}


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
    """ConfigError for the first dotted key in a section that none of ``objectives`` reads. A config file may
    carry several objectives' sections (a recipe for each); a key *set* for a run - an override, a space
    axis, a file that also names its objective - in a section its objective does not read would silently
    do nothing."""
    from mmsn.objectives import SPECS

    own = {s for name in objectives if name in SPECS for s in SPECS[name].sections}
    objective = " / ".join(objectives)
    owners: dict[str, list[str]] = {}
    for name, spec in SPECS.items():
        for section in spec.sections:
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


def _fields(cls: type) -> dict[str, Any]:
    """Name -> type of a config class's keys; for Config the core sections and every objective's own."""
    if cls is Config:
        hints = typing.get_type_hints(Config)
        core = {name: hints[name] for name in CORE}
        return {**{k: core[k] for k in CORE[:5]}, **objective_sections(), **{k: core[k] for k in CORE[5:]}}
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping; unknown keys are errors listing the valid ones."""
    _require(isinstance(data, Mapping), prefix.rstrip(".") or "config", f"expected a mapping, got {data!r}")
    if cls is Config:
        data = _migrate_legacy(data)
    fields = _fields(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown key {dotted!r}; valid keys here: {', '.join(prefix + n for n in fields)}")
        kind = fields[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = from_dict(kind, value or {}, f"{dotted}.")  # type: ignore[arg-type]
        else:
            kwargs[key] = _coerce(value, kind, dotted)
    if cls is Config:
        kwargs["sections"] = {k: kwargs.pop(k) for k in list(kwargs) if k not in CORE}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) that ``from_dict`` reads back to an equal config."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return to_dict(v)
        return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v
    if isinstance(config, Config):
        return {name: plain(getattr(config, name)) for name in _fields(Config)}
    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


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
    for name, kind in _fields(cls).items():
        if dataclasses.is_dataclass(kind):
            out.update(flat_fields(kind, f"{prefix}{name}."))  # type: ignore[arg-type]
        else:
            out[f"{prefix}{name}"] = kind
    return out


__all__ = [
    "CORE",
    "LEGACY_KEYS",
    "Config",
    "EHRConfig",
    "MaskConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "ProbeConfig",
    "TrainConfig",
    "ViewsConfig",
    "canonical_key",
    "check_objective_keys",
    "coerce",
    "ehr_free_overrides",
    "flat_fields",
    "flat_keys",
    "from_dict",
    "load_config",
    "objective_sections",
    "objective_spec",
    "require",
    "to_dict",
]
