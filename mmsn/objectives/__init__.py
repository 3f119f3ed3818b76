"""Pretraining objectives: a registry of name -> builder, like ``mmsn.models.fusion.FUSIONS``.

``build_objective(cfg, ehr_width)`` builds the objective named by ``cfg.objective.name``; each one
reads its own config section (``cfg.msn``, ``cfg.vicreg``, ...; see ``mmsn.config.OBJECTIVE_SECTIONS``)
and implements ``mmsn.objectives.base.Objective``, which is all the engine knows of it.
"""

from __future__ import annotations

from collections.abc import Callable

from mmsn.config import Config
from mmsn.errors import ConfigError, unknown_name
from mmsn.objectives.base import Batch, DataShape, LossOutput, Objective
from mmsn.objectives.dino import DINO
from mmsn.objectives.mae import MAE
from mmsn.objectives.mlvicx import MLVICX
from mmsn.objectives.mrm import MRMEHR
from mmsn.objectives.msn import MultimodalMSN
from mmsn.objectives.supcon import MSNSupCon, SupConEHR
from mmsn.objectives.vicreg import VICReg

# name -> builder(config, what the layers depend on in the data)
OBJECTIVES: dict[str, Callable[[Config, DataShape], Objective]] = {
    "msn": MultimodalMSN.from_config,
    "vicreg": VICReg,
    "mlvicx": MLVICX,
    "dino": DINO,
    "mae": MAE,
    "mrm_ehr": MRMEHR,
    "supcon_ehr": SupConEHR,
    "msn_supcon": MSNSupCon.from_config,
}


def build_objective(cfg: Config, data: DataShape) -> Objective:
    name = cfg.objective.name
    if name not in OBJECTIVES:
        raise ConfigError(unknown_name("objective.name", name, OBJECTIVES))
    return OBJECTIVES[name](cfg, data)


__all__ = ["DINO", "MAE", "MLVICX", "MRMEHR", "OBJECTIVES", "Batch", "DataShape", "LossOutput", "MSNSupCon",
           "MultimodalMSN", "Objective", "SupConEHR", "VICReg", "build_objective"]
