"""EHR columns as pseudo-labels of supervised contrastive learning (OLIVES; Khosla et al. 2020), alone
(``supcon_ehr``) or added to MSN (``msn_supcon``); docs/objectives.md.

The positives of an image are the other images of the (global) batch that share its pseudo-label:
an EHR column's value (sex, view, a stay flag), its bin (age, by train-split quantiles or equal width)
or the patient (OLIVES). A missing value never makes a positive. Several columns add up as a weighted
sum of SupCon terms (``supcon.weights``). The loss is ``mmsn.losses.supcon_loss`` (equal to
pytorch-metric-learning's ``SupConLoss``). Patient ids are turned into integer codes in memory
(mmsn.data.targets) and never logged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmsn.config import Config, require
from mmsn.data.cache import Cache
from mmsn.data.dataset import EHRTargets, pseudo_label_targets
from mmsn.data.source import EHRColumn
from mmsn.errors import ConfigError
from mmsn.losses import supcon_loss
from mmsn.models.backbone import ViTEncoder
from mmsn.objectives.base import Batch, DataShape, FusedOnline, LossOutput, full_precision
from mmsn.objectives.msn import MultimodalMSN
from mmsn.objectives.spec import ObjectiveSpec
from mmsn.views import MultiCropViews


@dataclass(frozen=True)
class MSNSupConConfig:
    """MSN + weight * SupCon on the anchor/target CLS features with EHR-defined positives."""

    weight: float = 1.0  # lambda of the SupCon term

    def __post_init__(self) -> None:
        require(0 <= self.weight <= 100, "msn_supcon.weight", "must be in [0, 100]")


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
        require(len(self.labels) > 0, "supcon.labels", "name at least one pseudo-label column")
        require(not self.weights or len(self.weights) == len(self.labels), "supcon.weights",
                 f"give one weight per label ({len(self.labels)}) or none")
        require(all(0 <= w <= 100 for w in self.weights), "supcon.weights", "must be in [0, 100]")
        require(self.bins >= 2, "supcon.bins", f"{self.bins}: a binning needs at least 2 bins")
        require(self.binning in ("quantile", "width"), "supcon.binning", "quantile | width")
        require(0 < self.temperature <= 10, "supcon.temperature", "must be in (0, 10]")


def projector(dim: int, hidden: int, out: int) -> nn.Module:
    """SupCon's head: Linear-ReLU-Linear (Khosla et al.: 2048 -> 128)."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out))


def weighted_supcon(z: Tensor, labels: Tensor, cfg: SupConConfig) -> Tensor:
    """Sum over pseudo-label columns l of w_l * SupCon(z, labels[:, l]); z (N, D) normalised, labels (N, L)."""
    weights = cfg.weights or (1.0,) * labels.shape[1]
    with full_precision(z):
        terms = [w * supcon_loss(z.float(), labels[:, k], cfg.temperature, gather_distributed=True)
                 for k, w in enumerate(weights)]
    return torch.stack(terms).sum()


def _labels(batch: Batch, views: int) -> Tensor:
    if batch.pseudo_labels is None:
        raise ValueError("this objective needs batch.pseudo_labels (supcon.labels)")
    return batch.pseudo_labels.repeat(views, 1)  # (views*B, L), view-major like the embeddings


class SupConEHR(FusedOnline):
    """SupCon over two global views; positives share a pseudo-label. The online encoder is probed."""

    part_names: tuple[str, ...] = ("supcon",)

    def __init__(self, cfg: Config, data: DataShape) -> None:
        super().__init__()
        self.supcon = cfg.supcon
        self.build_online(cfg.model, cfg.ehr, cfg.views.size, data.ehr_width)
        self.projector = projector(self.encoder.embed_dim, cfg.model.head_hidden, cfg.model.head_out)
        self.views = MultiCropViews(dataclasses.replace(cfg.views, n_focal=0))

    def forward(self, batch: Batch, generator: torch.Generator | None,
                schedules: Mapping[str, float]) -> LossOutput:
        a, b, _ = self.views(batch.images, generator)
        e = self.embed_ehr(batch.ehr, a.dtype)
        # EHR fused into the first view only (as VICReg here), both with concat_both.
        h = torch.cat([self.fused_features(a, e), self.fused_features(b, e if self.fusion.in_target else None)])
        loss = weighted_supcon(F.normalize(self.projector(h), dim=1), _labels(batch, 2), self.supcon)
        return LossOutput(loss, {"supcon": loss})

    def eval_encoder(self) -> ViTEncoder:
        return self.encoder


class MSNSupCon(MultimodalMSN):
    """MSN + ``msn_supcon.weight`` * SupCon on the anchor and target CLS features (projected, L2-normed)."""

    part_names: tuple[str, ...] = ("cross_entropy", "me_max", "supcon")

    def __init__(self, cfg: Config, data: DataShape) -> None:
        super().__init__(cfg.model, cfg.mask, cfg.ehr, data.ehr_width, cfg.views.size, cfg.msn, cfg.views)
        self.supcon = cfg.supcon
        self.weight = cfg.msn_supcon.weight
        self.projector = projector(self.encoder.embed_dim, cfg.model.head_hidden, cfg.model.head_out)

    @classmethod
    def from_config(cls, cfg: Config, data: DataShape) -> MSNSupCon:
        return cls(cfg, data)

    def forward(self, batch: Batch, generator: torch.Generator | None,
                schedules: Mapping[str, float]) -> LossOutput:
        target, anchor, focal = self.views(batch.images, generator)
        anchor_feats, target_feats = self.features(target, anchor, focal, batch.ehr, generator)
        anchor_out = self.head(anchor_feats)
        with torch.no_grad():
            target_out = self.target_head(target_feats)
        msn = self.msn_loss(anchor_out, target_out)
        b = batch.size
        # The anchor view's CLS (gradient) and the EMA target's (none) form the SupCon views.
        z = F.normalize(self.projector(torch.cat([anchor_feats[:b], target_feats])), dim=1)
        con = weighted_supcon(z, _labels(batch, 2), self.supcon)
        return LossOutput(msn.loss + self.weight * con, {**msn.parts, "supcon": con})


PSEUDO_LABEL_SPECIAL = ("patient", "image")  # pseudo-labels that are not EHR columns (OLIVES; SimCLR)


def _pseudo_labels(cfg: Config, cache: Cache) -> EHRTargets:
    s = cfg.supcon
    return pseudo_label_targets(cache, s.labels, s.weights, s.bins, s.binning, key="supcon.labels")


def _check(cfg: Config, columns: Sequence[EHRColumn]) -> None:
    known = [c.name for c in columns]
    for label in cfg.supcon.labels:
        if label not in known and label not in PSEUDO_LABEL_SPECIAL:
            raise ConfigError(f"supcon.labels: unknown pseudo-label {label!r}; valid: "
                              f"{', '.join([*known, *PSEUDO_LABEL_SPECIAL])}")


def _describe(cfg: Config) -> list[str]:
    """SupCon's ``image`` label (each image its own class) uses no EHR."""
    labels = [label for label in cfg.supcon.labels if label != "image"]
    return [f"labels:{'+'.join(labels)}"] if labels else []


_TARGETS = {"ehr_targets": _pseudo_labels, "check": _check, "describe": _describe}
# Without EHR: supcon_ehr with each image its own class is SimCLR's positive rule; msn_supcon is MSN.
SPEC = ObjectiveSpec(name="supcon_ehr", build=SupConEHR, section="supcon", config=SupConConfig,
                     ehr_free={"supcon.labels": ["image"]}, **_TARGETS)  # type: ignore[arg-type]
SPEC_MSN = ObjectiveSpec(name="msn_supcon", build=MSNSupCon.from_config, section="msn_supcon",
                         config=MSNSupConConfig, reads=("msn", "supcon"), ehr_free={"objective.name": "msn"},
                         **_TARGETS)  # type: ignore[arg-type]

__all__ = ["PSEUDO_LABEL_SPECIAL", "SPEC", "SPEC_MSN", "MSNSupCon", "MSNSupConConfig", "SupConConfig", "SupConEHR",
           "projector", "weighted_supcon"]
