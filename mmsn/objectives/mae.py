"""Masked autoencoder (He et al., CVPR 2022, arXiv:2111.06377): the CXR-EHR-MSN paper's MAE baseline and
the image half of MRM (docs/objectives.md, MAE).

One global crop per image; ``mae.mask_ratio`` of its patch tokens are dropped per sample and the
encoder sees only the visible ones (with the CLS token); a light ViT decoder gets the visible tokens
back at their positions, a shared mask token elsewhere, and predicts every patch's pixels. The loss
is the MSE on the masked patches of per-patch normalised pixels (``norm_pix_loss``). EHR fusion acts
on the encoder's CLS token (and, for ``token``, through an extra encoder token), which the decoder
receives as its first token: the EHR is side information for the reconstruction. The decoder's
position embedding is learned (MAE's is fixed sin-cos): a small difference for a 2-block decoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from mmsn.config import Config, require
from mmsn.models.backbone import ViTEncoder, random_token_mask
from mmsn.objectives.base import Batch, DataShape, FusedOnline, LossOutput, full_precision
from mmsn.objectives.spec import ObjectiveSpec
from mmsn.views import MultiCropViews


@dataclass(frozen=True)
class MAEConfig:
    """MAE (He et al. 2022) and the image half of MRM: mask ratio, the light decoder, the pixel target."""

    mask_ratio: float = 0.75  # patch tokens hidden from the encoder (MAE and MRM: 0.75; CXR-EHR-MSN's MAE: 0.6)
    decoder_dim: int = 128  # decoder width (MAE: 512)
    decoder_depth: int = 2  # decoder blocks (MAE: 8)
    decoder_heads: int = 4  # decoder attention heads (MAE: 16)
    norm_pix_loss: bool = True  # MSE on per-patch standardised pixels (MAE, MRM)

    def __post_init__(self) -> None:
        require(0 < self.mask_ratio <= 0.95, "mae.mask_ratio", f"{self.mask_ratio} not in (0, 0.95]")
        require(self.decoder_dim >= 8 and self.decoder_dim % self.decoder_heads == 0, "mae.decoder_dim",
                 "must be >= 8 and a multiple of mae.decoder_heads")
        require(self.decoder_depth >= 1 and self.decoder_heads >= 1, "mae.decoder_depth", "must be >= 1")


def patchify(x: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, N, patch * patch * C), patches in row-major order (the ViT's token order)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def masked_patch_mse(pred: Tensor, target: Tensor, keep: Tensor, norm_pix: bool) -> Tensor:
    """MAE's loss: pred/target (B, N, P), keep (B, n_keep) visible indices -> mean over masked patches
    of the per-patch MSE; with ``norm_pix`` each target patch is standardised first (MAE: eps 1e-6)."""
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, N)
    masked = torch.ones_like(per_patch).scatter_(1, keep, 0.0)  # 1 where the patch was hidden
    return (per_patch * masked).sum() / masked.sum().clamp(min=1.0)


class MAEDecoder(nn.Module):
    """Light ViT decoder: tokens (B, 1 + n_keep, d) at ``keep`` -> pixel predictions (B, N, patch^2)."""

    def __init__(self, dim: int, n_patches: int, patch: int, cfg: MAEConfig) -> None:
        super().__init__()
        w = cfg.decoder_dim
        self.embed = nn.Linear(dim, w)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, w))
        self.pos = nn.Parameter(torch.zeros(1, 1 + n_patches, w))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = nn.Sequential(*(Block(w, cfg.decoder_heads, mlp_ratio=4.0) for _ in range(cfg.decoder_depth)))
        self.norm = nn.LayerNorm(w)
        self.head = nn.Linear(w, patch * patch)

    def forward(self, tokens: Tensor, keep: Tensor, n_patches: int) -> Tensor:
        y = self.embed(tokens)  # (B, 1 + n_keep, w)
        b, _, w = y.shape
        full = self.mask_token.expand(b, n_patches, w).clone()  # (B, N, w)
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, w), y[:, 1:])
        y = torch.cat([y[:, :1], full], dim=1) + self.pos  # (B, 1 + N, w)
        return self.head(self.norm(self.blocks(y)))[:, 1:]  # type: ignore[no-any-return]  # (B, N, p^2)


class MAE(FusedOnline):
    """Masked image modelling on one global crop; the encoder is exported and probed."""

    part_names: tuple[str, ...] = ("image",)

    def __init__(self, cfg: Config, data: DataShape) -> None:
        super().__init__()
        self.mae = cfg.mae
        self.build_online(cfg.model, cfg.ehr, cfg.views.size, data.ehr_width)
        self.n_patches = self.encoder.n_patches(cfg.views.size)
        self.decoder = MAEDecoder(self.encoder.embed_dim, self.n_patches, self.encoder.patch_size, cfg.mae)
        self.views = MultiCropViews(cfg.views)

    def encode_visible(self, batch: Batch, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """(view (B, 1, S, S), keep (B, n_keep), encoder tokens (B, 1 + n_keep, d) with the fused CLS first)."""
        x = self.views.single(batch.images, generator)
        keep = random_token_mask(x.shape[0], self.n_patches, self.mae.mask_ratio, True, x.device, generator)
        e = self.embed_ehr(batch.ehr, x.dtype)
        extra = self.fusion.extra_tokens(e) if e is not None else None
        tokens = self.encoder.forward_tokens(x, keep, extra)[0][:, :1 + keep.shape[1]]  # fusion token dropped
        if e is not None:
            tokens = torch.cat([self.fusion(tokens[:, 0], e).unsqueeze(1), tokens[:, 1:]], dim=1)
        return x, keep, tokens

    def image_loss(self, x: Tensor, keep: Tensor, tokens: Tensor) -> Tensor:
        pred = self.decoder(tokens, keep, self.n_patches)
        with full_precision(pred):
            return masked_patch_mse(pred.float(), patchify(x.float(), self.encoder.patch_size), keep,
                                    self.mae.norm_pix_loss)

    def forward(self, batch: Batch, generator: torch.Generator | None,
                schedules: Mapping[str, float]) -> LossOutput:
        x, keep, tokens = self.encode_visible(batch, generator)
        loss = self.image_loss(x, keep, tokens)
        return LossOutput(loss, {"image": loss})

    def eval_encoder(self) -> ViTEncoder:
        return self.encoder


SPEC = ObjectiveSpec(name="mae", build=MAE, section="mae", config=MAEConfig, rankme=False)

__all__ = ["SPEC", "MAEConfig", "MAE", "MAEDecoder", "masked_patch_mse", "patchify"]
