"""ViT backbones (timm) that take the indices of the patch tokens to keep.

The encoder is timm's ``VisionTransformer``, unchanged: ``ViTEncoder`` only re-orders the calls of
its ``forward_features`` so that patch tokens can be dropped (MSN's anchor masking, docs/method.md,
Masking) and extra tokens appended (token fusion) between the position embedding and the blocks.
Parameter names stay timm's, so a saved ``vit`` state dict loads into ``timm.create_model``.

Importing this module registers two small ViTs with timm (``vit_nano``, ``vit_micro``), so
``timm.create_model("vit_micro", ...)`` works anywhere once ``mmsn.models`` is imported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import timm
import torch
from timm.layers import DropPath
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmsn.errors import ConfigError

# timm's register_model reads the pretrained cfg of each entrypoint from this module-level dict.
# No weights exist for these sizes: the cfgs only record the 1-channel input and that there is no head.
default_cfgs = generate_default_cfgs({
    "vit_nano": {"input_size": (1, 32, 32), "mean": (0.5,), "std": (0.5,), "num_classes": 0,
                 "first_conv": "patch_embed.proj", "classifier": "head"},
    "vit_micro": {"input_size": (1, 64, 64), "mean": (0.5,), "std": (0.5,), "num_classes": 0,
                  "first_conv": "patch_embed.proj", "classifier": "head"},
})


def _build(variant: str, pretrained: bool, model_args: dict[str, Any],
           kwargs: dict[str, Any]) -> VisionTransformer:
    """timm's own ViT factory path (as ``_create_vision_transformer``), caller kwargs winning."""
    if pretrained:
        raise ConfigError(f"{variant} has no pretrained weights; use pretrained=False")
    model = build_model_with_cfg(VisionTransformer, variant, pretrained=False,
                                 pretrained_filter_fn=checkpoint_filter_fn, **{**model_args, **kwargs})
    return model  # type: ignore[no-any-return]


@register_model
def vit_nano(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Unit-test ViT: dim 64, 2 blocks, 2 heads, patch 8 at 32 px (16 patches); 72 k parameters."""
    args = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0,
            "in_chans": 1}
    return _build("vit_nano", pretrained, args, kwargs)


@register_model
def vit_micro(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """CPU-quickstart ViT: dim 96, 4 blocks, 3 heads (head dim 32 as ViT-Tiny), patch 8 at 64 px (64 patches);
    460 k parameters."""
    args = {"img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3, "mlp_ratio": 4.0,
            "in_chans": 1}
    return _build("vit_micro", pretrained, args, kwargs)


# Our own sizes; any other timm ``vit_*`` VisionTransformer name is accepted too (create_vit).
BACKBONES: dict[str, Callable[..., VisionTransformer]] = {"vit_nano": vit_nano, "vit_micro": vit_micro}


def check_backbone(name: str) -> None:
    """ConfigError listing the valid names unless ``name`` is ours or a timm ViT."""
    if name in BACKBONES or (name.startswith("vit_") and timm.is_model(name)):
        return
    ours = ", ".join(sorted(BACKBONES))
    raise ConfigError(f"unknown backbone {name!r}; valid: {ours}, or any timm ViT name "
                      "(timm.list_models('vit_*'), e.g. vit_tiny_patch16_224, vit_small_patch16_224)")


def create_vit(name: str, img_size: int, patch_size: int = 0, drop_path: float = 0.0) -> VisionTransformer:
    """A freshly initialised 1-channel timm ViT with a CLS token and no classifier.

    ``dynamic_img_size=True`` lets views of other sizes (224 anchors and 96 focal views, or 64/32 px
    on CPU) share one encoder: the position embedding (a grid for ``img_size``) is interpolated.
    ``patch_size > 0`` overrides the backbone's patch size (e.g. 8 for 64 px inputs). Never
    pretrained: no hub downloads, and ImageNet RGB weights do not fit 1-channel CXRs unchanged.
    """
    check_backbone(name)
    overrides: dict[str, Any] = {"patch_size": patch_size} if patch_size > 0 else {}
    model = timm.create_model(
        name, pretrained=False, in_chans=1, num_classes=0, img_size=img_size, drop_path_rate=drop_path,
        class_token=True, global_pool="token", dynamic_img_size=True, **overrides,
    )
    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"backbone {name!r} is a {type(model).__name__}, not a timm VisionTransformer")
    patch = model.patch_embed.patch_size[0]
    if img_size % patch:
        raise ConfigError(f"model.patch_size: image size {img_size} is not a multiple of the patch size "
                          f"{patch}")
    return model


def n_keep_tokens(n_patches: int, ratio: float) -> int:
    """Patch tokens kept when dropping ``ratio`` of ``n_patches``: floor(N * (1 - ratio)), at least 1."""
    # The epsilon absorbs float artefacts such as 100 * (1 - 0.9) = 9.999...98, which would keep 9, not 10.
    return max(1, math.floor(n_patches * (1.0 - ratio) + 1e-6))


def random_token_mask(batch: int, n_patches: int, ratio: float, per_sample: bool,
                      device: torch.device | str | None = None,
                      generator: torch.Generator | None = None) -> Tensor:
    """Sorted indices of the patch tokens to keep: LongTensor (batch, n_keep).

    Indices count patches only (0..n_patches-1); the CLS token is kept by ``ViTEncoder`` itself.
    ``per_sample=False`` draws one permutation shared by the batch (original MSN), ``True`` one per
    sample (lightly). Random numbers come from ``generator`` (on its own device) when given.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    n_keep = n_keep_tokens(n_patches, ratio)
    rows = batch if per_sample else 1
    draw_on = generator.device if generator is not None else device
    noise = torch.rand(rows, n_patches, generator=generator, device=draw_on)  # (rows, N)
    keep = noise.argsort(dim=1)[:, :n_keep].sort(dim=1).values  # sorted: tokens keep their order
    keep = keep if device is None else keep.to(device)
    return keep.expand(batch, n_keep)  # a view when shared: the rows are one mask


def keep_patch_tokens(tokens: Tensor, keep: Tensor, n_prefix: int) -> Tensor:
    """(B, n_prefix + N, d) tokens -> (B, n_prefix + n_keep, d): prefix (CLS) tokens always kept."""
    prefix, patches = tokens[:, :n_prefix], tokens[:, n_prefix:]
    index = keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1])  # (B, n_keep, d)
    return torch.cat([prefix, patches.gather(1, index)], dim=1)


class ViTEncoder(nn.Module):
    """A timm ViT whose forward keeps a subset of patch tokens and may append extra tokens.

    Follows timm's ``forward_features`` step by step (patch_embed, ``_pos_embed``, norm_pre,
    blocks, norm) with the token selection inserted after the position embedding, so masked
    tokens never enter attention (MSN) and the unmasked path equals timm's own forward.
    """

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        if vit.cls_token is None:
            raise ConfigError("the ViT must have a class token (create it with create_vit)")
        self.vit = vit  # the attribute name is the state-dict prefix stripped by image_encoder_state_dict

    @property
    def embed_dim(self) -> int:
        """Width d of the tokens and of the CLS feature."""
        return int(self.vit.embed_dim)

    @property
    def patch_size(self) -> int:
        return int(self.vit.patch_embed.patch_size[0])

    def n_patches(self, img_size: int | tuple[int, int]) -> int:
        """Patch tokens of an ``img_size`` (side, or (H, W)) input."""
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        return (h // self.patch_size) * (w // self.patch_size)

    def forward(self, x: Tensor, keep: Tensor | None = None, extra_tokens: Tensor | None = None) -> Tensor:
        """x (B, 1, H, W) -> CLS feature (B, d).

        keep: LongTensor (B, n_keep) of patch indices to keep (``random_token_mask``); None keeps all.
        extra_tokens: (B, T, d) appended after the kept tokens (token fusion); they get no position
        embedding and influence the CLS token only through attention.
        """
        return self.forward_tokens(x, keep, extra_tokens)[0][:, 0]

    def forward_tokens(self, x: Tensor, keep: Tensor | None = None, extra_tokens: Tensor | None = None,
                       indices: Sequence[int] = ()) -> tuple[Tensor, list[Tensor]]:
        """x (B, 1, H, W) -> (final normed tokens (B, 1 + n_keep + T, d), [output of block i for i in
        ``indices``, each (B, 1 + n_keep + T, d), before the final norm]).

        Token order: CLS, the kept patch tokens (in patch order), the extra tokens. Unmasked, the block
        outputs equal timm's ``forward_intermediates(x, indices, norm=False, output_fmt="NLC")``; masked,
        timm has no such path, so the blocks are run here one by one.
        """
        tokens = self.vit.patch_embed(x)  # (B, H/p, W/p, d): dynamic_img_size keeps the grid shape
        tokens = self.vit._pos_embed(tokens)  # (B, 1 + N, d): CLS prepended, pos-embed interpolated
        if keep is not None:
            tokens = keep_patch_tokens(tokens, keep, self.vit.num_prefix_tokens)  # (B, 1 + n_keep, d)
        if extra_tokens is not None:
            tokens = torch.cat([tokens, extra_tokens.to(tokens.dtype)], dim=1)  # (B, 1 + n_keep + T, d)
        tokens = self.vit.norm_pre(tokens)
        wanted = set(indices)
        if not wanted <= set(range(len(self.vit.blocks))):
            raise ValueError(f"block indices {sorted(wanted)} outside 0..{len(self.vit.blocks) - 1}")
        outs: list[Tensor] = []
        # timm's set_grad_checkpointing only acts inside its own forward_features: honour it here, per block
        recompute = bool(getattr(self.vit, "grad_checkpointing", False)) and torch.is_grad_enabled()
        for i, block in enumerate(self.vit.blocks):
            tokens = checkpoint(block, tokens, use_reentrant=False) if recompute else block(tokens)
            if i in wanted:
                outs.append(tokens)
        return self.vit.norm(tokens), outs

    def probe_features(self, x: Tensor, kind: str = "cls", last_blocks: int = 4) -> Tensor:
        """x (B, 1, H, W) -> what a linear probe sees (``ProbeConfig.features``): ``cls`` (B, d),
        ``cls_mean`` (B, 2d: CLS, mean of the patch tokens) or ``last_cls`` (B, k*d: the CLS token of
        each of the last k = ``last_blocks`` blocks, each through the final norm, oldest first)."""
        if kind == "cls":
            return self(x)
        if kind == "cls_mean":
            tokens = self.forward_tokens(x)[0]
            return torch.cat([tokens[:, 0], tokens[:, self.n_prefix_tokens:].mean(dim=1)], dim=1)
        if kind == "last_cls":
            if last_blocks > self.depth:
                raise ConfigError(f"probe.last_blocks: {last_blocks} but the backbone has {self.depth} blocks")
            outs = self.forward_tokens(x, indices=range(self.depth - last_blocks, self.depth))[1]
            return torch.cat([self.vit.norm(t)[:, 0] for t in outs], dim=1)
        raise ConfigError(f"probe.features: unknown kind {kind!r}")

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def n_prefix_tokens(self) -> int:
        return int(self.vit.num_prefix_tokens)


def disable_drop_path(module: nn.Module) -> None:
    """Set every stochastic-depth rate in ``module`` to 0 (the EMA target must be deterministic)."""
    for m in module.modules():
        if isinstance(m, DropPath):
            m.drop_prob = 0.0


__all__ = [
    "BACKBONES",
    "ViTEncoder",
    "check_backbone",
    "create_vit",
    "disable_drop_path",
    "keep_patch_tokens",
    "n_keep_tokens",
    "random_token_mask",
    "vit_micro",
    "vit_nano",
]
