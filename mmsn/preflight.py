"""Checks of a config against a dataset that need no data and no model: registry names and EHR names.

``mmsn pretrain`` runs them when it opens the cache, and a sweep runs them on every trial config of
its space before the cache is prepared or Ray starts, with the same messages, so a typo
(``ehr.fusion: concat_anchr``, ``model.backbone: vit_nanoo``, ``ehr.features: [[demografic]]``) fails
in seconds, naming the key.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmsn.config import Config, objective_spec
from mmsn.data.ehr import resolve_features
from mmsn.data.source import EHRColumn
from mmsn.errors import ConfigError
from mmsn.models.backbone import check_backbone
from mmsn.models.fusion import takes_ehr


def check_features(key: str, requested: Sequence[str], columns: Sequence[EHRColumn]) -> None:
    """ConfigError naming ``key`` when ``requested`` (EHR groups and/or columns) names what ``columns`` lacks."""
    try:
        resolve_features(requested, tuple(columns))
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}") from None


def check_config(cfg: Config, columns: Sequence[EHRColumn]) -> None:
    """ConfigError naming the key for an unknown backbone, fusion, objective or EHR name (``columns``: the
    dataset's); the objective checks its own EHR names (its spec's ``check``)."""
    try:
        check_backbone(cfg.model.backbone)
    except ConfigError as err:
        raise ConfigError(f"model.backbone: {err}") from None
    if takes_ehr(cfg.ehr.fusion):
        if not cfg.ehr.features:
            raise ConfigError(f"ehr.features: fusion {cfg.ehr.fusion!r} needs at least one EHR feature")
        check_features("ehr.features", cfg.ehr.features, columns)
    spec = objective_spec(cfg.objective.name)
    if spec.check is not None:
        spec.check(cfg, columns)


__all__ = ["check_config", "check_features"]
