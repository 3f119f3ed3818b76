"""Multimodal Masked Siamese Network: backbone, EHR fusion, head and prototypes in one module.

Composition follows dino's ``MultiCropWrapper`` and lightly's MSN heads: the anchor branch is
``ViTEncoder`` -> (``EHREmbed``, ``Fusion``) -> ``ProjectionHead``; the target branch is an EMA copy
of the encoder and head (and of the EHR encoder and fusion when ``fusion.in_target``) that never
receives gradients. Prototypes are learnable, shared by both branches and never EMA'd. The loss
lives in ``mmsn.losses`` and gets ``(anchor_out, target_out, prototypes)``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from mmsn.config import EHRConfig, MaskConfig, ModelConfig
from mmsn.models.backbone import ViTEncoder, create_vit, disable_drop_path, random_token_mask
from mmsn.models.fusion import EHREmbed, Fusion, build_fusion
from mmsn.models.heads import ProjectionHead, init_prototypes

M = TypeVar("M", bound=nn.Module)


def _frozen_copy(module: M) -> M:
    """EMA target of ``module``: same weights, no gradients, no stochastic depth."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    # As DINO's teacher: the target's prediction should be a deterministic function of its weights.
    disable_drop_path(target)
    return target


class MultimodalMSN(nn.Module):
    """MSN with EHR fused into the anchor branch (CXR-EHR-MSN) or per ``EHRConfig.fusion``.

    Args:
        model, mask, ehr: the typed configs; ``ehr_width``: columns of the EHR row (0 with fusion none);
        img_size: target/anchor side in px, the grid of the position embedding.
    """

    def __init__(self, model: ModelConfig, mask: MaskConfig, ehr: EHRConfig, ehr_width: int,
                 img_size: int) -> None:
        super().__init__()
        self.mask = mask
        self.encoder = ViTEncoder(create_vit(model.backbone, img_size, model.patch_size, model.drop_path))
        dim = self.encoder.embed_dim
        embed, fusion = build_fusion(ehr.fusion, dim, ehr_width, ehr.embed_dim, ehr.hidden)
        self.ehr_embed: EHREmbed | None = embed
        self.fusion: Fusion = fusion
        self.head = ProjectionHead(dim, model.head_hidden, model.head_out)
        self.prototypes = init_prototypes(model.n_prototypes, model.head_out)  # (K, D)

        self.target_encoder = _frozen_copy(self.encoder)
        self.target_head = _frozen_copy(self.head)
        fuse_target = embed is not None and fusion.in_target
        self.target_ehr_embed = _frozen_copy(embed) if fuse_target and embed is not None else None
        self.target_fusion = _frozen_copy(fusion) if fuse_target else None

    def _pairs(self) -> Iterator[tuple[nn.Module, nn.Module]]:
        """(anchor module, its EMA target) pairs; prototypes are deliberately absent."""
        yield self.encoder, self.target_encoder
        yield self.head, self.target_head
        if self.target_ehr_embed is not None and self.ehr_embed is not None:
            yield self.ehr_embed, self.target_ehr_embed
        if self.target_fusion is not None:
            yield self.fusion, self.target_fusion

    def _embed_ehr(self, ehr: Tensor | None) -> Tensor | None:
        """EHR row (B, w) -> embedding (B, E); None when the strategy uses no EHR."""
        if self.ehr_embed is None:
            return None
        if ehr is None:
            raise ValueError(f"fusion {type(self.fusion).__name__} needs the EHR batch, got ehr=None")
        return self.ehr_embed(ehr.to(self.prototypes.dtype))  # type: ignore[no-any-return]

    def _anchor_features(self, x: Tensor, e: Tensor | None, masked: bool,
                         generator: torch.Generator | None) -> Tensor:
        """Views (N, 1, s, s) + their EHR embeddings (N, E) -> fused CLS features (N, d)."""
        keep = None
        if masked and self.mask.ratio > 0:
            n = self.encoder.n_patches((x.shape[-2], x.shape[-1]))
            keep = random_token_mask(x.shape[0], n, self.mask.ratio, self.mask.per_sample, x.device,
                                     generator)  # (N, n_keep)
        tokens = self.fusion.extra_tokens(e) if e is not None else None
        h = self.encoder(x, keep, tokens)  # (N, d)
        return self.fusion(h, e) if e is not None else h

    def forward(self, target: Tensor, anchors: Tensor, focals: Tensor | None, ehr: Tensor | None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One MSN step's outputs, before the loss.

        target, anchors: (B, 1, S, S); focals: (B*F, 1, s, s) view-major (row v*B+b is image b) or None;
        ehr: (B, w) float or None (fusion none). Returns ``anchor_out`` (B*(1+F), D), view-major with
        the anchor rows first, and ``target_out`` (B, D), head outputs not normalised (the loss does).
        The anchor is masked with ``mask.ratio``; focal views only when ``mask.focal``.
        """
        b = anchors.shape[0]
        e = self._embed_ehr(ehr)  # (B, E) or None
        feats = [self._anchor_features(anchors, e, True, generator)]  # [(B, d)]
        if focals is not None and focals.shape[0] > 0:
            n_focal = focals.shape[0] // b
            # The same EHR embedding serves every view of an image (paper); view-major repeat.
            e_focal = e.repeat(n_focal, 1) if e is not None else None  # (B*F, E)
            feats.append(self._anchor_features(focals, e_focal, self.mask.focal, generator))  # (B*F, d)
        # One head pass over all views, so BatchNorm normalises over them together (as MSN does).
        anchor_out = self.head(torch.cat(feats))  # (B*(1+F), D)
        with torch.no_grad():
            target_out = self._target_forward(target, ehr)  # (B, D)
        return anchor_out, target_out

    def _target_forward(self, x: Tensor, ehr: Tensor | None) -> Tensor:
        """Unmasked EMA branch: (B, 1, S, S) -> (B, D); fuses EHR only when ``fusion.in_target``."""
        if self.target_ehr_embed is None or self.target_fusion is None:
            return self.target_head(self.target_encoder(x))  # type: ignore[no-any-return]
        if ehr is None:
            raise ValueError("the target branch fuses EHR (fusion.in_target) but ehr=None")
        e = self.target_ehr_embed(ehr.to(self.prototypes.dtype))
        h = self.target_encoder(x, None, self.target_fusion.extra_tokens(e))
        return self.target_head(self.target_fusion(h, e))  # type: ignore[no-any-return]

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA step: target = momentum * target + (1 - momentum) * anchor, for every branch pair."""
        for online, target in self._pairs():
            t_params: list[Tensor] = list(target.parameters())
            a_params: list[Tensor] = [p.detach() for p in online.parameters()]
            torch._foreach_mul_(t_params, momentum)
            torch._foreach_add_(t_params, a_params, alpha=1.0 - momentum)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Evaluation features: the target encoder's CLS (B, d) of images (B, 1, H, W); no EHR, head or mask.

        The caller chooses train/eval mode (eval for probes; the encoder has no BatchNorm, so the
        mode only matters for dropout and stochastic depth, both off in the target).
        """
        return self.target_encoder(x)  # type: ignore[no-any-return]

    def image_encoder_state_dict(self) -> dict[str, Tensor]:
        """The target ViT's timm state dict (keys as timm's), e.g. for
        ``timm.create_model(name, num_classes=0, in_chans=1, img_size=..., checkpoint_path=file)``."""
        vit = self.target_encoder.vit
        return {k: v.detach().clone() for k, v in vit.state_dict().items()}

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Trainable parameters for AdamW: decay and no-decay (``"apply_wd": False``) groups.

        No decay on biases, norm weights and every 1-D parameter, position embedding, CLS/register
        tokens and the prototypes (MSN). The no-decay group is marked so a weight-decay schedule skips it.
        """
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue  # the EMA target
            skip = p.ndim <= 1 or name.endswith(".bias") or name == "prototypes" or any(
                key in name for key in ("pos_embed", "cls_token", "reg_token"))
            (no_decay if skip else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay, "apply_wd": True},
                {"params": no_decay, "weight_decay": 0.0, "apply_wd": False}]


__all__ = ["MultimodalMSN"]
