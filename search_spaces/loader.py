"""Search-space files -> a validated :class:`Space` (no Ray, no Optuna here).

A space file states the base config, the axes with their distributions, conditional axes, seeds, the
scheduler and its milestones, the metric, resources per trial and the budget; see quickstart.yaml for
an annotated example. List-valued choices (``ehr.features: [[age], [age, view]]``) are carried as
strings joined by ``+`` (``"age+view"``) because Optuna's categorical values must be scalars.
"""

from __future__ import annotations

import itertools
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmsn.config import (
    Config,
    canonical_key,
    check_objective_keys,
    coerce,
    ehr_free_overrides,
    flat_fields,
    from_dict,
    load_config,
    objective_spec,
    set_dotted,
    to_dict,
)
from mmsn.data.registry import DATASETS, dataset_columns
from mmsn.errors import ConfigError, unknown_name
from mmsn.objectives import NO_EHR
from mmsn.preflight import check_config

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "mmsn" / "configs"
AXIS_KINDS = ("choice", "grid", "uniform", "loguniform", "int")
SCHEDULERS = ("fifo", "asha", "hyperband", "halving", "racing", "pbt")
HALVING = ("halving", "racing")  # synchronous successive halving of a grid's arms (racing: only on evidence)
# Schedulers that compare trials one by one: the seeds of one arm would be ranked as if different arms
PER_TRIAL_SCHEDULERS = ("asha", "hyperband")
ALGORITHMS = ("grid", "optuna", "random")
METRICS = ("val_auroc", "rankme")  # rankme: the label-free effective rank of the val features (max)
INACTIVE = "-"  # value of a conditional axis that does not apply to a trial (e.g. features when fusion=none)
SEED_KEY = "train.seed"
# The keys variant_name describes (a trial's EHR use): they make an arm's variant, not its setting.
VARIANT_KEYS = ("ehr.fusion", "ehr.features", "mrm.features", "supcon.labels")
ALWAYS_ARM_KEYS = ("objective.name",)  # compared, never pooled, whatever the search algorithm
VANILLA = "msn"  # a sweep that compares objectives measures every arm against MSN without EHR too
TOP_KEYS = {"name", "description", "base", "data", "axes", "seeds", "search", "scheduler", "metric", "evaluate",
            "resources", "budget", "smoke"}


@dataclass(frozen=True)
class Axis:
    """One searched config key. ``when``: the axis exists only if every named key has one of the values."""

    key: str
    kind: str
    values: tuple[Any, ...]
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def active(self, params: Mapping[str, Any]) -> bool:
        return all(params.get(k) in allowed for k, allowed in self.when)


def _need(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class DataSpec:
    dataset: str = "synthetic"
    root: str | None = None
    size: int = 64
    n: int | None = 3000
    seed: int = 0
    split: str = "0.7,0.1,0.2"

    def __post_init__(self) -> None:
        _need(16 <= self.size <= 1024, "data.size", f"{self.size} not in 16..1024")
        _need(self.n is None or self.n >= 10, "data.n", f"{self.n}: need at least 10 images (or null for all)")


@dataclass(frozen=True)
class EvaluateSpec:
    """The papers' evaluation protocol (mmsn.protocol): after a trial's last milestone its frozen encoder is
    probed on the primary cache and on each of ``datasets`` at each of ``label_fractions``."""

    datasets: tuple[DataSpec, ...] = ()  # other datasets (data specs as `data:`), each with its own labels and split
    label_fractions: tuple[float, ...] = (1.0,)  # of the train patients whose labels the probe sees
    draws: int = 3  # seeded draws of the train patients per fraction below 1 (mean and spread are reported)
    every_milestone: bool = False  # also at every milestone, not only the last

    def __post_init__(self) -> None:
        fractions = self.label_fractions
        _need(all(0 < f <= 1 for f in fractions) and len(set(fractions)) == len(fractions),
              "evaluate.label_fractions", f"{list(fractions)}: distinct fractions, each in (0, 1]")
        _need(self.draws >= 1, "evaluate.draws", f"{self.draws}: must be >= 1")

    @property
    def active(self) -> bool:
        return bool(self.datasets) or tuple(self.label_fractions) != (1.0,)


@dataclass(frozen=True)
class SchedulerSpec:
    type: str = "asha"
    milestones: tuple[int, ...] = (2, 4, 8)  # epochs at which a probe runs and Tune gets a result
    reduction_factor: int = 2
    perturbation_interval: int = 1  # PBT: milestones between exploit/explore steps
    mutations: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # PBT: key -> candidate values
    # PBT: exploit only once every trial reached the interval (Ray's synch PBT): the same decisions on
    # every run, at the cost of waiting for the slowest trial
    synch: bool = False
    alpha: float = 0.05  # racing: the level an arm's lag behind the rung's leader is tested at (Holm-corrected)

    def __post_init__(self) -> None:
        _need(self.reduction_factor >= 2, "scheduler.reduction_factor", "must be >= 2")
        _need(self.perturbation_interval >= 1, "scheduler.perturbation_interval", "must be >= 1")
        _need(0 < self.alpha < 1, "scheduler.alpha", f"{self.alpha}: a test level in (0, 1)")


@dataclass(frozen=True)
class SearchSpec:
    algorithm: str = "grid"
    num_samples: int = 1  # optuna/random: trials; grid: repeats of the whole grid
    points_to_evaluate: tuple[dict[str, Any], ...] = ()
    seed: int = 0  # the sampler's seed; for a grid, the seed of the order its points start in
    # grid: "shuffled" (seeded by `seed`: an asynchronous scheduler sees strong and weak arms early, not the
    # file's first axis value first) or "given" (file order)
    order: str = "shuffled"
    # optuna/random: where the Optuna study lives. None: a journal file in the experiment (Optuna's storage
    # for shared file systems); or a database URL (postgresql://..., mysql://...) the cluster can reach.
    storage: str | None = None

    def __post_init__(self) -> None:
        _need(self.num_samples >= 1, "search.num_samples", "must be >= 1")
        _need(self.storage is None or "://" in self.storage, "search.storage",
              f"{self.storage!r}: a database URL (e.g. postgresql://user@host/db), or leave it out for the journal "
              "file in the experiment")


PROBE_PLACES = ("in_place", "beside")
# schedulers that only ever continue or stop a trial: one that pauses it at a milestone (to restart it
# from there) cannot use a result that arrives after the trial trained past that milestone
PROBE_BESIDE_SCHEDULERS = ("fifo", "asha")


@dataclass(frozen=True)
class Resources:
    workers: int = 1  # Ray Train workers per trial
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # fractional: several small trials share one GPU
    max_concurrent_trials: int = 1
    # where a several-worker trial's milestone probe runs: in_place (every rank extracts a share of the
    # features, rank 0 fits, training waits) or beside (a Ray task holding one worker's CPUs and GPUs probes
    # the milestone's state while the workers train on; the scheduler acts on the result when it arrives)
    probe: str = "in_place"

    def __post_init__(self) -> None:
        _need(self.probe in PROBE_PLACES, "resources.probe", f"{self.probe!r}; valid: {', '.join(PROBE_PLACES)}")
        _need(self.probe != "beside" or self.workers > 1, "resources.probe",
              "beside needs resources.workers >= 2 (a one-worker trial trains in its own process, which probes)")
        _need(self.workers >= 1, "resources.workers", f"{self.workers}: need at least 1 Ray Train worker")
        _need(self.cpus_per_worker > 0, "resources.cpus_per_worker", "must be > 0")
        _need(self.gpus_per_worker >= 0, "resources.gpus_per_worker", "GPUs must be >= 0")
        _need(self.workers == 1 or self.gpus_per_worker == 0 or self.gpus_per_worker >= 1,
              "resources.gpus_per_worker", f"{self.gpus_per_worker:g} with resources.workers {self.workers}: DDP "
              "(NCCL) needs a whole GPU per worker; give each worker 1 GPU, or run 1 worker per trial on a "
              "fraction")
        _need(self.max_concurrent_trials >= 1, "resources.max_concurrent_trials", "must be >= 1")


@dataclass(frozen=True)
class Budget:
    time_budget_s: float = 0.0  # 0: no limit
    max_failures: int = 1  # retries of a dead trial (one worker) or worker group (Ray Train), per trial

    def __post_init__(self) -> None:
        _need(self.time_budget_s >= 0, "budget.time_budget_s", "must be >= 0 (0: no limit)")
        _need(self.max_failures >= 0, "budget.max_failures", "must be >= 0")


@dataclass(frozen=True)
class Arm:
    """What the analysis ranks: a trial's EHR use (variant_name) within a setting of the other searched
    keys (Space.arm_keys), e.g. ``concat_anchor:demographic [objective.name=msn]``."""

    variant: str
    setting: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        text = _describe(self.setting)
        return f"{self.variant} [{text}]" if text else self.variant

    @property
    def context(self) -> str:
        """The setting without EHR refinements: where an explicitly named baseline is looked for."""
        return _describe([(k, v) for k, v in self.setting if not k.startswith("ehr.")])


def _describe(pairs: Iterable[tuple[str, Any]]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in pairs)


@dataclass(frozen=True)
class Space:
    name: str
    path: Path
    description: str
    base: Config
    base_overrides: tuple[tuple[str, Any], ...]
    data: DataSpec
    axes: tuple[Axis, ...]
    seeds: tuple[int, ...]
    search: SearchSpec
    scheduler: SchedulerSpec
    metric: str = "val_auroc"
    mode: str = "max"
    resources: Resources = field(default_factory=Resources)
    budget: Budget = field(default_factory=Budget)
    smoke: tuple[tuple[str, Any], ...] = ()
    evaluate: EvaluateSpec = field(default_factory=EvaluateSpec)

    def objectives(self) -> tuple[str, ...]:
        """The objectives the space's trials can run: the values of an ``objective.name`` axis, else the base's."""
        axis = next((a for a in self.axes if a.key == "objective.name"), None)
        return tuple(str(v) for v in axis.values) if axis is not None else (self.base.objective.name,)

    @property
    def epochs(self) -> int:
        return self.scheduler.milestones[-1]

    def arm_keys(self) -> tuple[str, ...]:
        """Searched keys besides the EHR use whose values make separate arms, never the seed. In a grid,
        every axis with several values (EHR refinements such as ``ehr.embed_dim`` first); under optuna or
        random search the other axes are tuned, so pooled, except the objective (ALWAYS_ARM_KEYS)."""
        keys = [a.key for a in self.axes if a.key not in (*VARIANT_KEYS, SEED_KEY) and len(a.values) > 1
                and a.kind in ("choice", "grid")]
        if self.search.algorithm != "grid":
            keys = [k for k in keys if k in ALWAYS_ARM_KEYS]
        return tuple(sorted(keys, key=lambda k: (not k.startswith("ehr."), k not in ALWAYS_ARM_KEYS)))

    def arm(self, params: Mapping[str, Any]) -> Arm:
        """The arm of a trial with these params (as Tune carries them: encoded, ``-`` when inactive)."""
        active = {k: v for k, v in params.items() if v != INACTIVE}
        setting = tuple((k, active[k]) for k in self.arm_keys() if k in active)
        return Arm(variant_name(self.config(active, checked=False)), setting)

    def counterpart(self, params: Mapping[str, Any], objective: str | None = None) -> Arm:
        """The arm of the same setting with no EHR input or target (mmsn.config.ehr_free_overrides), run
        with ``objective`` if given (the analysis's vanilla-MSN reference): what an EHR use is measured
        against. mrm_ehr's counterpart is mae, msn_supcon's msn, supcon_ehr's the image as its own class."""
        moved = {k: v for k, v in params.items() if v != INACTIVE}
        if objective is not None:
            moved["objective.name"] = objective
        name = str(moved.get("objective.name", self.base.objective.name))
        moved.update({k: encode_value(v) for k, v in ehr_free_overrides(name).items()})
        return self.arm(self._prune(moved))

    def describe(self, params: Mapping[str, Any], cfg: Config | None = None) -> dict[str, Any]:
        """What a trial is, as the analysis ranks it (stored with the trial, ``arm.json``): its EHR use
        (``variant``, ``fusion``, ``features``), its ``arm`` and ``context``, its objective, and the arms it is
        measured against: ``ehr_free_arm`` (the same setting without EHR) and ``vanilla_arm`` (vanilla MSN
        in the same setting, when the space compares objectives with MSN among them)."""
        from mmsn.models.fusion import takes_ehr

        cfg = cfg or self.config({k: v for k, v in params.items() if v != INACTIVE}, checked=False)
        arm, objectives = self.arm(params), self.objectives()
        vanilla = self.counterpart(params, VANILLA).name if VANILLA in objectives and len(objectives) > 1 else None
        return {"variant": arm.variant, "arm": arm.name, "context": arm.context, "objective": cfg.objective.name,
                "fusion": cfg.ehr.fusion,
                "features": "+".join(cfg.ehr.features) if takes_ehr(cfg.ehr.fusion) else None,
                "ehr_free_arm": self.counterpart(params).name, "vanilla_arm": vanilla}

    def _prune(self, params: dict[str, Any]) -> dict[str, Any]:
        """Drop what no longer applies after a change of objective or fusion: keys of sections the
        objective does not read and conditional axes whose condition fails."""
        from mmsn.config import objective_sections

        name = str(params.get("objective.name", self.base.objective.name))
        foreign = set(objective_sections()) - set(objective_spec(name).sections)
        out = {k: v for k, v in params.items() if k.split(".")[0] not in foreign}
        for axis in self.axes:
            if axis.key in out and not axis.active(out):
                del out[axis.key]
        return out

    def expected_trials(self) -> int | None:
        """How many trials a grid sweep creates (grid points x seeds x repeats); None for other searches."""
        return len(grid_points(self)) * self.search.num_samples if self.search.algorithm == "grid" else None

    def config(self, params: Mapping[str, Any], checked: bool = True) -> Config:
        """The trial config: base + axis values (+ ``train.seed``); errors name the key and the file.
        ``train.epochs`` is the last milestone, so a trial restarted at any milestone follows the same
        schedule. Registry and EHR names are checked against the space's dataset (mmsn.preflight), before
        any data is read, unless ``checked`` is False (a trial: its space was checked when it loaded)."""
        active = {k: v for k, v in params.items() if v != INACTIVE}
        cfg = _build(self.path, self.base, {**active, "train.epochs": self.epochs})
        if not checked:
            return cfg
        try:
            # An axis value is set for this trial; base.set is a recipe for every objective the space runs.
            check_objective_keys(active, cfg.objective.name)
            check_objective_keys([k for k, _ in self.base_overrides], *self.objectives())
            check_config(cfg, dataset_columns(self.data.dataset))
        except ConfigError as err:
            raise ConfigError(f"{self.path}: {err}") from None
        return cfg


def encode_value(value: Any) -> Any:
    """List choices become "a+b" strings so Optuna/Tune can carry them as scalars."""
    return "+".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value


def decode_value(key: str, value: Any) -> Any:
    """Back from ``encode_value``: "a+b" -> a list whose items have the field's element type, so list
    axes of numbers (``optim.betas``, ``probe.l2_grid``, ``views.global_scale``) search as numbers."""
    kind = flat_fields().get(canonical_key(key), str)
    if not isinstance(value, str) or kind is str:
        return value
    element = next(iter(a for a in typing.get_args(kind) if a is not Ellipsis), str)
    parts = [] if value == "" else value.split("+")
    if element in (int, float):
        try:
            return [element(p) for p in parts]
        except ValueError:
            return parts  # not numbers: the config check names the key
    return parts


def _build(path: Path, base: Config, params: Mapping[str, Any]) -> Config:
    data = to_dict(base)
    for key, value in params.items():
        set_dotted(data, key, decode_value(key, value))
    try:
        return from_dict(Config, data)  # type: ignore[no-any-return]
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _err(path: Path, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")
SIMPLE = (int, float, str, bool, bool | None, int | None, float | None, str | None, tuple[int, ...])


def _section(path: Path, raw: Mapping[str, Any], name: str, cls: type,
             convert: Callable[[dict], dict] | None = None) -> Any:
    """A typed space section: unknown keys, wrong types and out-of-range values name ``name.key``."""
    data = dict(raw.get(name) or {})
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise _err(path, f"unknown key '{name}.{unknown[0]}'; valid: {', '.join(sorted(hints))}")
    try:
        data = {k: coerce(v, hints[k], f"{name}.{k}") if hints[k] in SIMPLE else v for k, v in data.items()}
        return cls(**(convert(data) if convert else data))
    except ConfigError as err:
        raise _err(path, str(err)) from None
    except TypeError as err:
        raise _err(path, f"{name}: {err}") from None


def _check_key(path: Path, key: str, where: str) -> str:
    """The key's current name (legacy ``loss.*`` / ``optim.ema_*`` map to ``msn.*``); unknown keys fail."""
    if canonical_key(key) not in flat_fields():
        raise _err(path, f"{where}: unknown config key {key!r} (see mmsn/config.py for the keys)")
    return canonical_key(key)


def _parse_axis(path: Path, key: str, spec: Any) -> Axis:
    key = _check_key(path, key, f"axes.{key}")
    if not isinstance(spec, Mapping):
        raise _err(path, f"axes.{key}: expected a mapping like {{choice: [...]}}")
    kinds = [k for k in spec if k in AXIS_KINDS]
    extra = sorted(set(spec) - set(AXIS_KINDS) - {"when"})
    if len(kinds) != 1 or extra:
        raise _err(path, f"axes.{key}: give exactly one of {', '.join(AXIS_KINDS)} (and optionally 'when')")
    kind = kinds[0]
    values = tuple(encode_value(v) for v in spec[kind])
    if kind in ("uniform", "loguniform", "int"):
        if len(values) != 2 or not values[0] < values[1] or (kind == "loguniform" and values[0] <= 0):
            raise _err(path, f"axes.{key}: {kind} needs [low, high] with low < high (> 0 for loguniform)")
    elif not values:
        raise _err(path, f"axes.{key}: {kind} needs at least one value")
    when = []
    for cond_key, allowed in (spec.get("when") or {}).items():
        cond_key = _check_key(path, cond_key, f"axes.{key}.when")
        allowed = allowed if isinstance(allowed, list) else [allowed]
        when.append((cond_key, tuple(encode_value(v) for v in allowed)))
    return Axis(key, kind, values, tuple(when))


def _overrides(path: Path, raw: Any, where: str) -> tuple[tuple[str, Any], ...]:
    return tuple((_check_key(path, key, f"{where}.{key}"), value) for key, value in (raw or {}).items())


def _base_config(path: Path, raw: Mapping[str, Any]) -> tuple[Config, tuple[tuple[str, Any], ...]]:
    base = raw.get("base") or {}
    name = base.get("config", "quickstart")
    file = Path(name) if str(name).endswith(".yaml") else CONFIGS / f"{name}.yaml"
    if not file.is_absolute() and not file.exists():
        file = path.parent / file
    if not file.is_file():
        raise _err(path, f"base.config: no config {name!r} (looked for {file})")
    overrides = _overrides(path, base.get("set"), "base.set")
    return _build(path, load_config(file), dict(overrides)), overrides


def _data_spec(path: Path, raw: Any, name: str) -> DataSpec:
    """A data spec (``data:`` or an evaluation dataset); errors name ``name.key``."""
    if not isinstance(raw, Mapping):
        raise _err(path, f"{name}: a data spec (dataset, root, size, n, seed, split), got {raw!r}")
    try:
        spec: DataSpec = _section(path, {name: raw}, name, DataSpec)
    except ConfigError as err:  # DataSpec's own checks name data.<key>
        raise ConfigError(str(err).replace(": data.", f": {name}.")) from None
    if spec.dataset not in DATASETS:
        raise _err(path, f"{name}.dataset: {unknown_name('dataset', spec.dataset, DATASETS)}")
    return spec


def _evaluate(path: Path, raw: Mapping[str, Any]) -> EvaluateSpec:
    section = dict(raw.get("evaluate") or {})
    datasets = section.get("datasets") or []
    if not isinstance(datasets, list):
        raise _err(path, "evaluate.datasets: a list of data specs (as data:)")
    section["datasets"] = [_data_spec(path, d, f"evaluate.datasets[{i}]") for i, d in enumerate(datasets)]
    fractions = section.get("label_fractions", [1.0])
    if not isinstance(fractions, list) or not all(isinstance(f, (int, float)) for f in fractions):
        raise _err(path, f"evaluate.label_fractions: a list of numbers in (0, 1], got {fractions!r}")
    return _section(path, {"evaluate": section}, "evaluate", EvaluateSpec, lambda d: {
        **d, "datasets": tuple(d["datasets"]), "label_fractions": tuple(float(f) for f in fractions)})


def _scheduler(data: dict) -> dict:
    data["milestones"] = tuple(int(m) for m in data.get("milestones", SchedulerSpec.milestones))
    data["mutations"] = tuple((k, tuple(v)) for k, v in (data.get("mutations") or {}).items())
    return data


def load_space(path: str | Path, smoke: bool = False) -> Space:
    """Read and validate a space file; ``smoke`` applies its ``smoke:`` overrides (tiny, fast)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise _err(path, f"cannot read search space ({err})") from None
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise _err(path, f"unknown key {unknown[0]!r}; valid: {', '.join(sorted(TOP_KEYS))}")
    if smoke:
        raw = _apply_smoke(path, raw)
    base, overrides = _base_config(path, raw)
    metric = raw.get("metric") or {}
    space = Space(
        name=str(raw.get("name") or path.stem), path=path, description=str(raw.get("description", "")),
        base=base, base_overrides=overrides, data=_section(path, raw, "data", DataSpec),
        axes=tuple(_parse_axis(path, k, v) for k, v in (raw.get("axes") or {}).items()),
        seeds=tuple(int(s) for s in raw.get("seeds", [0])),
        search=_section(path, raw, "search", SearchSpec,
                        lambda d: {**d, "points_to_evaluate": tuple(d.get("points_to_evaluate", ()))}),
        scheduler=_section(path, raw, "scheduler", SchedulerSpec, _scheduler),
        metric=str(metric.get("name", "val_auroc")), mode=str(metric.get("mode", "max")),
        resources=_section(path, _without_retired(raw), "resources", Resources),
        budget=_section(path, raw, "budget", Budget),
        smoke=_overrides(path, raw.get("smoke", {}).get("set") if raw.get("smoke") else None, "smoke.set"),
        evaluate=_evaluate(path, raw),
    )
    validate(space)
    return space


# Keys of spaces written before the probe ran in place on the trial's own resources: still read (an old
# experiment's space.yaml must load for its analysis), never used; a sweep says so.
RETIRED_RESOURCES = ("probe_cpus", "probe_gpus")


def _without_retired(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {"resources": {k: v for k, v in (raw.get("resources") or {}).items() if k not in RETIRED_RESOURCES}}


def retired_keys(path: Path, smoke: bool = False) -> list[str]:
    """The retired ``resources`` keys a space file sets (with its smoke section when ``smoke``)."""
    raw = yaml.safe_load(path.read_text()) or {}
    sections = [raw.get("resources") or {}] + ([(raw.get("smoke") or {}).get("resources") or {}] if smoke else [])
    return sorted({f"resources.{k}" for section in sections for k in section if k in RETIRED_RESOURCES})


def _apply_smoke(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """Merge the file's ``smoke:`` section over the space: ``set`` extends base.set; data, scheduler,
    search, resources and budget are merged key by key; seeds and axes are replaced."""
    smoke = raw.get("smoke") or {}
    merged = dict(raw)
    merged["base"] = {**(raw.get("base") or {}),
                      "set": {**((raw.get("base") or {}).get("set") or {}), **(smoke.get("set") or {})}}
    for section in ("data", "scheduler", "search", "resources", "budget", "evaluate"):
        if section in smoke:
            merged[section] = {**(raw.get(section) or {}), **smoke[section]}
    for replaced in ("seeds", "axes"):  # replaced whole: a smoke run keeps only a corner of the grid
        if replaced in smoke:
            merged[replaced] = smoke[replaced]
    return merged


def validate(space: Space) -> None:
    """Cross-field checks; also builds each choice once so a bad value fails before Ray starts."""
    path, sched = space.path, space.scheduler
    if sched.type not in SCHEDULERS:
        raise _err(path, f"scheduler.type {sched.type!r}; valid: {', '.join(SCHEDULERS)}")
    if space.search.algorithm not in ALGORITHMS:
        raise _err(path, f"search.algorithm {space.search.algorithm!r}; valid: {', '.join(ALGORITHMS)}")
    if space.metric not in METRICS or space.mode not in ("max", "min"):
        raise _err(path, f"metric: name must be one of {METRICS} and mode max|min")
    if space.metric == "rankme":
        unranked = [name for name in space.objectives() if not objective_spec(name).rankme]
        if unranked:
            raise _err(path, f"metric.name rankme: RankMe cannot rank runs of {', '.join(unranked)} (their embeddings "
                             "are trained to reconstruct, not to spread); use val_auroc")
        if space.mode != "max":
            raise _err(path, "metric.mode: rankme is maximised (a higher effective rank is a less collapsed one)")
    if not sched.milestones or list(sched.milestones) != sorted(set(sched.milestones)) or sched.milestones[0] < 1:
        raise _err(path, f"scheduler.milestones {list(sched.milestones)}: strictly increasing epochs >= 1")
    if space.search.algorithm == "grid" and any(a.kind not in ("choice", "grid") for a in space.axes):
        raise _err(path, "search.algorithm grid: every axis must be choice or grid")
    if space.search.order not in ("shuffled", "given"):
        raise _err(path, f"search.order {space.search.order!r}; valid: shuffled, given")
    if space.resources.probe == "beside" and sched.type not in PROBE_BESIDE_SCHEDULERS:
        raise _err(path, f"resources.probe beside with scheduler.type {sched.type}: {sched.type} pauses trials at "
                         "milestones, and a probe beside training reports after the trial trained past the "
                         f"milestone; use resources.probe: in_place, or scheduler.type "
                         f"{' or '.join(PROBE_BESIDE_SCHEDULERS)}")
    if sched.type == "pbt" and not sched.mutations:
        raise _err(path, "scheduler.mutations: PBT needs at least one mutated key")
    for key, _ in sched.mutations:
        if _check_key(path, key, f"scheduler.mutations.{key}") != key:
            raise _err(path, f"scheduler.mutations.{key}: write it as {canonical_key(key)!r}")
    if space.data.dataset not in DATASETS:
        raise _err(path, f"data.dataset: {unknown_name('dataset', space.data.dataset, DATASETS)}")
    if space.search.algorithm == "grid":  # every trial the sweep will run
        for point in grid_points(space):
            space.config(point)
    for axis in space.axes:
        for value in axis.values:  # with the axis's conditions met, as a trial that has it
            space.config({**{k: allowed[0] for k, allowed in axis.when}, axis.key: value})
    for point in space.search.points_to_evaluate:
        space.config({k: encode_value(v) for k, v in point.items()})


def check_scheduler(space: Space) -> None:
    """What a sweep checks before it starts, beyond :func:`validate`: a multi-fidelity scheduler must compare
    arms, not the seeds of one arm against each other. (Not part of loading: an experiment run before this
    rule still loads for its analysis.)"""
    path, sched, search = space.path, space.scheduler, space.search
    repeats = len(space.seeds) * (search.num_samples if search.algorithm == "grid" else 1)
    if sched.type in PER_TRIAL_SCHEDULERS and repeats > 1:
        raise _err(path, f"scheduler.type {sched.type} compares trials one by one, so the {repeats} runs of an "
                         "arm (seeds x grid repeats) would be ranked as if they were different arms: use "
                         "scheduler.type halving (synchronous successive halving of arms by their mean over "
                         "seeds) or fifo")
    population = space.expected_trials() if search.algorithm == "grid" else search.num_samples
    if sched.type == "pbt" and sched.synch and (population or 0) > space.resources.max_concurrent_trials:
        raise _err(path, f"scheduler.synch: synchronous PBT compares all {population} trials at each milestone, "
                         f"but resources.max_concurrent_trials {space.resources.max_concurrent_trials} keeps the "
                         "others from starting while the first wait: raise max_concurrent_trials to the population "
                         "(trials that do not fit wait in PENDING) or set synch: false")
    if sched.type in HALVING:
        if search.algorithm != "grid":
            raise _err(path, f"scheduler.type {sched.type} ranks the arms of a grid (every arm reaches a rung before "
                             f"any is promoted); search.algorithm {search.algorithm}: use asha")
        if len(sched.milestones) < 2:
            raise _err(path, f"scheduler.type {sched.type}: give at least two milestones (the rungs are every "
                             "milestone but the last)")
    if sched.type == "racing":
        arms = {space.arm(point).name for point in grid_points(space)}
        if len(arms) < 2:
            raise _err(path, f"scheduler.type racing: the grid has {len(arms)} arm; racing compares arms (axes)")
        if space.metric != "val_auroc":
            raise _err(path, "scheduler.type racing tests the val AUROC's per-image scores: metric.name val_auroc")


def scheduler_warnings(space: Space) -> list[str]:
    """What a sweep prints before it starts about its scheduler (nothing is refused for these)."""
    sched, warmup = space.scheduler, space.base.optim.warmup_epochs
    if sched.type in (*PER_TRIAL_SCHEDULERS, *HALVING) and sched.milestones[0] <= warmup:
        return [f"{space.path}: scheduler.milestones: the first rung (epoch {sched.milestones[0]}) comes before the "
                f"end of the lr warm-up (optim.warmup_epochs {warmup:g}): arms are compared before they have "
                "learnt much, and the comparison is mostly noise; put the first milestone after the warm-up"]
    return []


def grid_points(space: Space) -> list[dict[str, Any]]:
    """The explicit grid: product of axis values, inactive conditional axes dropped, duplicates
    merged, times the seeds (``train.seed``). Order is stable (file order)."""
    keys = [a.key for a in space.axes]
    points: list[dict[str, Any]] = []
    for combo in itertools.product(*(a.values for a in space.axes)):
        params = dict(zip(keys, combo))
        params = {a.key: params[a.key] for a in space.axes if a.active(params)}
        if params not in points:
            points.append(params)
    return [{**p, "train.seed": s} for p in points for s in space.seeds]


def suggest(space: Space, trial: Any) -> dict[str, Any]:
    """Define-by-run for Optuna: ``trial`` is an ``optuna.Trial``; conditional axes are asked only
    when active. Returns the sampled params (plus the seed, a categorical when several)."""
    params: dict[str, Any] = {}
    for axis in space.axes:
        if not axis.active(params):
            continue
        lo_hi = axis.values
        if axis.kind in ("choice", "grid"):
            params[axis.key] = trial.suggest_categorical(axis.key, list(axis.values))
        elif axis.kind == "int":
            params[axis.key] = trial.suggest_int(axis.key, int(lo_hi[0]), int(lo_hi[1]))
        else:
            params[axis.key] = trial.suggest_float(axis.key, float(lo_hi[0]), float(lo_hi[1]),
                                                   log=axis.kind == "loguniform")
    seeds = list(space.seeds)
    params["train.seed"] = trial.suggest_categorical("train.seed", seeds) if len(seeds) > 1 else seeds[0]
    return params


def variant_name(cfg: Config) -> str:
    """The EHR use of a trial (mmsn.objectives.ehr_use): what the analysis ranks within an objective."""
    from mmsn.objectives import ehr_use

    return ehr_use(cfg)


def shipped_spaces() -> list[Path]:
    return sorted(HERE.glob("*.yaml"))


__all__ = ["NO_EHR", "VANILLA", "VARIANT_KEYS", "Arm", "Axis", "Space", "grid_points", "load_space", "shipped_spaces",
           "suggest", "variant_name"]
