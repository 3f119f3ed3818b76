"""Checks of a config against a dataset that need no data and no model: registry names and EHR names.

``mmsn pretrain`` runs them when it opens the cache, and a sweep runs them on every trial config of
its space before the cache is prepared or Ray starts, with the same messages, so a typo
(``ehr.fusion: concat_anchr``, ``model.backbone: vit_nanoo``, ``ehr.features: [[demografic]]``) fails
in seconds, naming the key.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmsn.config import Config
from mmsn.data.ehr import resolve_features
from mmsn.data.source import EHRColumn
from mmsn.errors import ConfigError, unknown_name
from mmsn.models.backbone import check_backbone
from mmsn.models.fusion import FUSIONS

PSEUDO_LABEL_SPECIAL = ("patient", "image")  # pseudo-labels that are not EHR columns (OLIVES; SimCLR)


def _features(key: str, requested: Sequence[str], columns: Sequence[EHRColumn]) -> None:
    try:
        resolve_features(requested, tuple(columns))
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}") from None


def check_config(cfg: Config, columns: Sequence[EHRColumn]) -> None:
    """ConfigError naming the key for an unknown backbone, fusion or EHR name (``columns``: the dataset's)."""
    try:
        check_backbone(cfg.model.backbone)
    except ConfigError as err:
        raise ConfigError(f"model.backbone: {err}") from None
    if cfg.ehr.fusion not in FUSIONS:
        raise ConfigError(unknown_name("ehr.fusion", cfg.ehr.fusion, FUSIONS))
    if cfg.ehr.fusion != "none":
        _features("ehr.features", cfg.ehr.features, columns)
    name = cfg.objective.name
    if name == "mrm_ehr":
        if not columns:
            raise ConfigError("objective.name: mrm_ehr needs EHR columns, and this dataset's caches have none")
        _features("mrm.features", cfg.mrm.features, columns)
    if name in ("supcon_ehr", "msn_supcon"):
        known = [c.name for c in columns]
        for label in cfg.supcon.labels:
            if label not in known and label not in PSEUDO_LABEL_SPECIAL:
                raise ConfigError(f"supcon.labels: unknown pseudo-label {label!r}; valid: "
                                  f"{', '.join([*known, *PSEUDO_LABEL_SPECIAL])}")


__all__ = ["PSEUDO_LABEL_SPECIAL", "check_config"]
