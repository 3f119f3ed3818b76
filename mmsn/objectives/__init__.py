"""Pretraining objectives: a registry of name -> builder, like ``mmsn.models.fusion.FUSIONS``.

``build_objective(cfg, ehr_width)`` builds the objective named by ``cfg.objective.name``; each one
reads its own config section (``cfg.msn``, ``cfg.vicreg``, ...; see ``mmsn.config.OBJECTIVE_SECTIONS``)
and implements ``mmsn.objectives.base.Objective``, which is all the engine knows of it.
"""

from __future__ import annotations

from collections.abc import Callable

from mmsn.config import Config
from mmsn.errors import ConfigError, unknown_name
from mmsn.objectives.base import Batch, LossOutput, Objective
from mmsn.objectives.dino import DINO
from mmsn.objectives.mlvicx import MLVICX
from mmsn.objectives.msn import MultimodalMSN
from mmsn.objectives.vicreg import VICReg

# name -> builder(config, EHR input width)
OBJECTIVES: dict[str, Callable[[Config, int], Objective]] = {
    "msn": MultimodalMSN.from_config,
    "vicreg": VICReg,
    "mlvicx": MLVICX,
    "dino": DINO,
}


def build_objective(cfg: Config, ehr_width: int) -> Objective:
    name = cfg.objective.name
    if name not in OBJECTIVES:
        raise ConfigError(unknown_name("objective.name", name, OBJECTIVES))
    return OBJECTIVES[name](cfg, ehr_width)


__all__ = ["DINO", "MLVICX", "OBJECTIVES", "Batch", "LossOutput", "MultimodalMSN", "Objective", "VICReg",
           "build_objective"]
