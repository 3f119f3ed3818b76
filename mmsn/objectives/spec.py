"""What an objective declares about itself, in its own file: :class:`ObjectiveSpec`.

Everything outside the objective's module asks its spec instead of keeping lists of objective names:
config loading (which sections exist, which an objective reads), preflight (its EHR names), the dataset
(the EHR targets it needs), the arm and variant names (how it uses the EHR as a target) and the analysis
(its EHR-free counterpart). ``mmsn.objectives`` lists the modules once; see docs/objectives.md for the
steps of adding one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmsn.config import Config
    from mmsn.data.cache import Cache
    from mmsn.data.dataset import EHRTargets
    from mmsn.data.source import EHRColumn
    from mmsn.objectives.base import DataShape, Objective


@dataclass(frozen=True)
class ObjectiveSpec:
    """One objective's declaration.

    name: the value of ``objective.name``; build: (config, data shape) -> the objective.
    section, config: the objective's own config section (``cfg.<section>``, a frozen dataclass whose
        defaults are its recipe), if it has one; reads: other objectives' sections it reads too
        (mrm_ehr is MAE plus a record target: it reads ``mae``).
    ehr_targets: (config, cache) -> the EHR it uses as a target, fit on the train split (None: none).
    check: (config, the dataset's EHR columns) -> raises ConfigError naming the key for an EHR name the
        dataset lacks; run before any data is read.
    describe: config -> how it uses the EHR as a target, as parts of the variant name
        (``record:age+sex``); empty when it uses none.
    ehr_free: dotted overrides (besides ``ehr.fusion: none``) that give the same run without any EHR: the
        counterpart an EHR use is measured against (msn_supcon -> msn).
    rankme: whether RankMe (the effective rank of its embeddings) can rank its runs: False for reconstruction
        objectives (MAE-like), whose embeddings are not trained to spread (Garrido et al.).
    """

    name: str
    build: Callable[[Config, DataShape], Objective]
    section: str | None = None
    config: type | None = None
    reads: tuple[str, ...] = ()
    ehr_targets: Callable[[Config, Cache], EHRTargets] | None = None
    check: Callable[[Config, Sequence[EHRColumn]], None] | None = None
    describe: Callable[[Config], list[str]] | None = None
    ehr_free: Mapping[str, Any] = field(default_factory=dict)
    rankme: bool = True

    def __post_init__(self) -> None:
        if (self.section is None) != (self.config is None):
            raise ValueError(f"objective {self.name}: give both section and config, or neither")

    @property
    def sections(self) -> tuple[str, ...]:
        """Every config section the objective reads: its own first."""
        return ((self.section,) if self.section else ()) + self.reads


__all__ = ["ObjectiveSpec"]
