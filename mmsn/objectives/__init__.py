"""Pretraining objectives, each declared in its own module by an ``ObjectiveSpec`` (mmsn.objectives.spec).

``SPECS`` maps ``objective.name`` to the declaration; ``build_objective(cfg, data)`` builds the objective a
config names. Each objective reads its own config section (``cfg.msn``, ``cfg.vicreg``, ...) and implements
``mmsn.objectives.base.Objective``, which is all the engine knows of it. Adding one: a module declaring
its ``SPEC`` and one line in ``_MODULES`` below (docs/objectives.md).
"""

from __future__ import annotations

from collections.abc import Callable

from mmsn.config import Config
from mmsn.errors import ConfigError, unknown_name
from mmsn.objectives import byol, dino, mae, mlvicx, mrm, msn, supcon, vicreg
from mmsn.objectives.base import Batch, DataShape, LossOutput, Objective
from mmsn.objectives.dino import DINO
from mmsn.objectives.mae import MAE
from mmsn.objectives.mlvicx import MLVICX
from mmsn.objectives.mrm import MRMEHR
from mmsn.objectives.msn import MultimodalMSN
from mmsn.objectives.spec import ObjectiveSpec
from mmsn.objectives.supcon import MSNSupCon, SupConEHR
from mmsn.objectives.vicreg import VICReg

# One line per objective module's declaration, in the order listings show them.
_DECLARED: tuple[ObjectiveSpec, ...] = (
    msn.SPEC,
    vicreg.SPEC,
    mlvicx.SPEC,
    dino.SPEC,
    mae.SPEC,
    mrm.SPEC,
    supcon.SPEC,
    supcon.SPEC_MSN,
    byol.SPEC,
)
SPECS: dict[str, ObjectiveSpec] = {spec.name: spec for spec in _DECLARED}

# name -> builder(config, what the layers depend on in the data)
OBJECTIVES: dict[str, Callable[[Config, DataShape], Objective]] = {name: s.build for name, s in SPECS.items()}


def build_objective(cfg: Config, data: DataShape) -> Objective:
    name = cfg.objective.name
    if name not in SPECS:
        raise ConfigError(unknown_name("objective.name", name, SPECS))
    return SPECS[name].build(cfg, data)


NO_EHR = "none"  # the EHR use of a run that uses no EHR at all


def ehr_use(cfg: Config) -> str:
    """The EHR use of a run, what the analysis ranks within an objective: ``none``, the fusion input
    ``fusion:feature+feature``, and/or the EHR as a target as the objective describes it (``record:fields``
    for mrm_ehr, ``labels:column+column`` for the SupCon objectives), joined by " & "."""
    from mmsn.models.fusion import takes_ehr

    parts = [f"{cfg.ehr.fusion}:{'+'.join(cfg.ehr.features)}"] if takes_ehr(cfg.ehr.fusion) else []
    describe = SPECS[cfg.objective.name].describe
    parts += describe(cfg) if describe is not None else []
    return " & ".join(parts) or NO_EHR


__all__ = ["DINO", "MAE", "MLVICX", "MRMEHR", "OBJECTIVES", "SPECS", "Batch", "DataShape", "LossOutput", "MSNSupCon",
           "MultimodalMSN", "Objective", "ObjectiveSpec", "SupConEHR", "VICReg", "build_objective", "ehr_use", "NO_EHR"]
