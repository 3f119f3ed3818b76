"""MRM-style masked record modelling with the EHR row as the record (docs/objectives.md), on top of MAE.

MRM (RL4M/MRM-pytorch) reconstructs masked report tokens from the image: its BERT-style decoder adds
the pooled visible image latent to every token embedding. Here the "report" is the EHR row: a fraction
``mrm.record_mask`` of its fields is masked per image, and a small transformer predicts them from
the pooled visible image tokens plus the visible fields. Categorical fields (binary ones too) are
scored by cross-entropy over their categories, continuous ones by MSE on the standardised value.
Missing values are never targets, and a masked field is not a missing one: each field has its own
learned "missing" and "masked" embeddings (MRM's bug of scoring unmasked and padding tokens is not
copied). L = L_image (MAE) + ``mrm.record_weight`` * L_record.

MRM reconstructs a 448 px image from a 224 px input (2p x 2p pixels per token); we reconstruct the
input view at its own resolution: the cache holds one size per image, and a 2x target would need a
second, larger copy of every image in the cache (4x the storage) for a benefit MRM reports as small.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from mmsn.config import Config, require
from mmsn.data.cache import Cache
from mmsn.data.dataset import EHRTargets, record_targets
from mmsn.data.source import EHRColumn
from mmsn.errors import ConfigError
from mmsn.objectives.base import Batch, DataShape, LossOutput, full_precision
from mmsn.objectives.mae import MAE
from mmsn.objectives.spec import ObjectiveSpec
from mmsn.preflight import check_features


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
        require(len(self.features) > 0, "mrm.features", "name at least one EHR field")
        require(0 < self.record_mask <= 1, "mrm.record_mask", f"{self.record_mask} not in (0, 1]")
        require(0 <= self.record_weight <= 100, "mrm.record_weight", "must be in [0, 100]")
        require(self.width >= 8 and self.width % self.heads == 0, "mrm.width",
                 "must be >= 8 and a multiple of mrm.heads")
        require(self.depth >= 1 and self.heads >= 1, "mrm.depth", "must be >= 1")


def mask_fields(targets: Tensor, fraction: float, generator: torch.Generator | None) -> Tensor:
    """(B, F) bool mask of the fields of ``targets`` (B, F) to hide: round(fraction * F) per row (at least
    1), uniformly at random among all fields (known or missing, so masking does not reveal which values are missing)."""
    b, n = targets.shape
    n_mask = max(1, round(fraction * n))
    order = torch.rand(b, n, generator=generator, device=generator.device if generator else targets.device)
    rank = order.to(targets.device).argsort(dim=1).argsort(dim=1)  # (B, F) rank of each field's draw
    return rank < n_mask


def record_loss(logits: list[Tensor], targets: Tensor, masked: Tensor, classes: tuple[int, ...]) -> Tensor:
    """Mean over scored fields (masked and known) of CE (categorical) or squared error (continuous).

    logits: one (B, c_k) or (B, 1) tensor per field; targets (B, F) float, NaN = missing (category codes as
    floats); masked (B, F) bool. 0 when nothing is scored (every masked field missing).
    Unscored rows are weighted 0, not left out: every field's head stays in the graph whatever the batch
    holds (DDP with find_unused_parameters=False needs a gradient for every parameter at every step), and
    nothing is read on the host."""
    total = targets.new_zeros(())
    count = targets.new_zeros(())
    for k, (out, c) in enumerate(zip(logits, classes)):
        scored = masked[:, k] & ~torch.isnan(targets[:, k])  # (B,)
        weight = scored.to(out.dtype)
        value = torch.where(scored, targets[:, k], torch.zeros_like(targets[:, k]))  # a valid target everywhere
        if c > 0:
            per_row = F.cross_entropy(out, value.long(), reduction="none")  # (B,)
        else:
            per_row = (out[:, 0] - value) ** 2
        total = total + (per_row * weight).sum()
        count = count + weight.sum()
    return total / count.clamp(min=1.0)


class RecordDecoder(nn.Module):
    """Field tokens (value / missing / masked embedding + field embedding + pooled image context) ->
    a few transformer blocks -> one head per field (categories, or one value)."""

    def __init__(self, image_dim: int, classes: tuple[int, ...], cfg: MRMConfig) -> None:
        super().__init__()
        w, n = cfg.width, len(classes)
        self.classes = classes
        self.values = nn.ModuleList(nn.Embedding(c, w) if c > 0 else nn.Linear(1, w) for c in classes)
        self.field = nn.Parameter(torch.zeros(1, n, w))
        self.missing = nn.Parameter(torch.zeros(1, n, w))
        self.masked = nn.Parameter(torch.zeros(1, n, w))
        for p in (self.field, self.missing, self.masked):
            nn.init.trunc_normal_(p, std=0.02)
        self.image = nn.Linear(image_dim, w)
        self.blocks = nn.Sequential(*(Block(w, cfg.heads, mlp_ratio=2.0) for _ in range(cfg.depth)))
        self.norm = nn.LayerNorm(w)
        self.heads = nn.ModuleList(nn.Linear(w, c if c > 0 else 1) for c in classes)

    def embed_values(self, targets: Tensor) -> Tensor:
        """(B, F) float targets (NaN = missing) -> (B, F, w) value embeddings (missing rows get 0 here)."""
        safe = torch.nan_to_num(targets, nan=0.0)
        embs = [emb(safe[:, k].long()) if c > 0 else emb(safe[:, k:k + 1])
                for k, (emb, c) in enumerate(zip(self.values, self.classes))]
        return torch.stack(embs, dim=1)

    def forward(self, image: Tensor, targets: Tensor, masked: Tensor) -> list[Tensor]:
        """image (B, d) pooled visible tokens, targets (B, F), masked (B, F) bool -> per-field logits."""
        missing = torch.isnan(targets).unsqueeze(-1)  # (B, F, 1)
        hide = masked.unsqueeze(-1)
        tokens = torch.where(hide, self.masked, torch.where(missing, self.missing, self.embed_values(targets)))
        tokens = tokens + self.field + self.image(image).unsqueeze(1)  # (B, F, w): MRM adds the image latent
        h = self.norm(self.blocks(tokens))
        return [head(h[:, k]) for k, head in enumerate(self.heads)]


class MRMEHR(MAE):
    """MAE + masked record modelling of the EHR row."""

    part_names: tuple[str, ...] = ("image", "record")

    def __init__(self, cfg: Config, data: DataShape) -> None:
        super().__init__(cfg, data)
        if not data.record_classes:
            raise ValueError("mrm_ehr needs EHR record fields (mrm.features); the data shape has none")
        self.mrm = cfg.mrm
        self.record = RecordDecoder(self.encoder.embed_dim, data.record_classes, cfg.mrm)

    def forward(self, batch: Batch, generator: torch.Generator | None,
                schedules: Mapping[str, float]) -> LossOutput:
        if batch.ehr_targets is None:
            raise ValueError("mrm_ehr needs batch.ehr_targets (the EHR record)")
        x, keep, tokens = self.encode_visible(batch, generator)
        image_loss = self.image_loss(x, keep, tokens)
        masked = mask_fields(batch.ehr_targets, self.mrm.record_mask, generator)
        pooled = tokens[:, 1:].mean(dim=1)  # (B, d) visible patch tokens only, as MRM's image latent
        logits = self.record(pooled, batch.ehr_targets, masked)
        with full_precision(pooled):
            rec = record_loss([z.float() for z in logits], batch.ehr_targets.float(), masked, self.record.classes)
        loss = image_loss + self.mrm.record_weight * rec
        return LossOutput(loss, {"image": image_loss, "record": rec})


def _record(cfg: Config, cache: Cache) -> EHRTargets:
    return record_targets(cache, cfg.mrm.features, key="mrm.features")


def _check(cfg: Config, columns: Sequence[EHRColumn]) -> None:
    if not columns:
        raise ConfigError("objective.name: mrm_ehr needs EHR columns, and this dataset's caches have none")
    check_features("mrm.features", cfg.mrm.features, columns)


def _describe(cfg: Config) -> list[str]:
    return [f"record:{'+'.join(cfg.mrm.features)}"]


SPEC = ObjectiveSpec(name="mrm_ehr", build=MRMEHR, section="mrm", config=MRMConfig, reads=("mae",),
                     ehr_targets=_record, check=_check, describe=_describe,
                     ehr_free={"objective.name": "mae"},  # MAE is mrm_ehr without its record target
                     rankme=False)

__all__ = ["MRMConfig", "MRMEHR", "RecordDecoder", "SPEC", "mask_fields", "record_loss"]
