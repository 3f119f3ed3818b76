"""Models: masking, fusion strategies, the EMA target and timm compatibility (vit_nano, 32 px, CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmsn.config import EHRConfig, MaskConfig, ModelConfig
from mmsn.errors import ConfigError
from mmsn.models import (
    FUSIONS,
    ProjectionHead,
    ViTEncoder,
    build_fusion,
    create_vit,
    init_prototypes,
    n_keep_tokens,
    random_token_mask,
)
from mmsn.models.fusion import FiLMFusion
from mmsn.objectives import MultimodalMSN

B, F_VIEWS, W = 4, 2, 5  # batch, focal views per image, EHR width
TINY = ModelConfig(backbone="vit_nano", head_hidden=32, head_out=16, n_prototypes=8)


def make_msn(fusion: str = "concat_anchor", mask: MaskConfig | None = None,
             img_size: int = 32) -> MultimodalMSN:
    torch.manual_seed(0)
    ehr = EHRConfig(fusion=fusion, embed_dim=8)
    width = W if fusion != "none" else 0
    return MultimodalMSN(TINY, mask or MaskConfig(), ehr, ehr_width=width, img_size=img_size)


def batch(size: int = 32, focal: int = 32, seed: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 1, size, size, generator=g), torch.randn(B, 1, size, size, generator=g),
            torch.randn(B * F_VIEWS, 1, focal, focal, generator=g), torch.randn(B, W, generator=g))


def run(msn: MultimodalMSN, ehr: Tensor | None, seed: int = 0,
        views: tuple[Tensor, ...] | None = None) -> tuple[Tensor, Tensor]:
    target, anchors, focals, _ = views or batch()
    return msn.outputs(target, anchors, focals, ehr, generator=torch.Generator().manual_seed(seed))


def toy_msn_loss(anchor: Tensor, target: Tensor, prototypes: Tensor) -> Tensor:
    """Cross-entropy of anchor prototype probabilities against (detached) target ones: enough for
    gradients (the real MSN loss lives in mmsn.losses)."""
    q = F.normalize(prototypes, dim=1)
    p = F.log_softmax(F.normalize(anchor, dim=1) @ q.T / 0.1, dim=1)  # (B*V, K)
    r = F.softmax(F.normalize(target, dim=1) @ q.T / 0.025, dim=1).detach()  # (B, K)
    return -(r.repeat(anchor.shape[0] // target.shape[0], 1) * p).sum(1).mean()


@contextmanager
def token_counts(encoder: ViTEncoder) -> Iterator[list[torch.Size]]:
    """Shapes of the token sequences entering the first block, one per encoder call."""
    shapes: list[torch.Size] = []
    handle = encoder.vit.blocks[0].register_forward_pre_hook(lambda _m, args: shapes.append(args[0].shape))
    try:
        yield shapes
    finally:
        handle.remove()


# --- masking ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "ratio", "expected"), [(196, 0.15, 166), (16, 0.15, 13), (100, 0.9, 10),
                                                      (16, 0.0, 16), (4, 0.95, 1)])
def test_mask_keeps_floor_of_kept_fraction(n: int, ratio: float, expected: int) -> None:
    assert n_keep_tokens(n, ratio) == expected
    keep = random_token_mask(B, n, ratio, per_sample=True, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (B, expected) and keep.dtype == torch.long
    assert bool((keep.diff(dim=1) > 0).all())  # sorted and unique
    assert int(keep.min()) >= 0 and int(keep.max()) < n


def test_per_sample_and_per_batch_masks() -> None:
    g = torch.Generator().manual_seed(0)
    shared = random_token_mask(8, 64, 0.5, per_sample=False, generator=g)
    assert bool((shared == shared[0]).all())
    own = random_token_mask(8, 64, 0.5, per_sample=True, generator=g)
    assert len({tuple(row.tolist()) for row in own}) == 8
    again = random_token_mask(8, 64, 0.5, per_sample=True, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(again, own)  # the generator advanced: fresh masks each step


def test_encoder_keeps_cls_and_exactly_n_keep_tokens() -> None:
    enc = ViTEncoder(create_vit("vit_nano", 32)).eval()
    x = torch.randn(B, 1, 32, 32)
    g = torch.Generator().manual_seed(0)
    keep = random_token_mask(B, enc.n_patches(32), 0.5, per_sample=True, generator=g)
    with token_counts(enc) as shapes:
        full_tokens = enc.vit._pos_embed(enc.vit.patch_embed(x))  # (B, 17, d)
        enc(x, keep)
    assert shapes == [torch.Size((B, 1 + 8, enc.embed_dim))]
    seen: list[Tensor] = []
    handle = enc.vit.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    enc(x, keep)
    handle.remove()
    assert torch.allclose(seen[0][:, 0], full_tokens[:, 0])  # the CLS token, always first
    assert torch.allclose(seen[0][:, 1:], full_tokens[torch.arange(B)[:, None], keep + 1])


def test_unmasked_encoder_equals_timm_forward() -> None:
    enc = ViTEncoder(create_vit("vit_nano", 32)).eval()
    x = torch.randn(B, 1, 32, 32)
    assert torch.allclose(enc(x), enc.vit(x), atol=1e-6)


def test_msn_masks_anchor_and_focal_views_per_config() -> None:
    views = batch()
    for focal, n_focal_tokens in ((True, 13), (False, 16)):
        msn = make_msn(mask=MaskConfig(ratio=0.15, per_sample=False, focal=focal))
        with token_counts(msn.encoder) as shapes, token_counts(msn.target_encoder) as target_shapes:
            anchor_out, target_out = run(msn, views[3], views=views)
        d = msn.encoder.embed_dim
        # one anchor pass, one batched pass over all focal views; the target unmasked
        assert shapes == [torch.Size((B, 1 + 13, d)), torch.Size((B * F_VIEWS, 1 + n_focal_tokens, d))]
        assert target_shapes == [torch.Size((B, 1 + 16, d))]
        assert anchor_out.shape == (B * (1 + F_VIEWS), 16) and target_out.shape == (B, 16)


def test_one_channel_input_and_two_view_sizes_share_the_encoder() -> None:
    msn = make_msn(img_size=64)
    assert msn.encoder.vit.patch_embed.proj.in_channels == 1
    views = batch(size=64, focal=32)
    with token_counts(msn.encoder) as shapes:
        anchor_out, target_out = run(msn, views[3], views=views)
    assert [s[1] for s in shapes] == [1 + 54, 1 + 13]  # floor(64 * .85), floor(16 * .85) patches + CLS
    assert anchor_out.shape == (B * (1 + F_VIEWS), 16) and target_out.shape == (B, 16)
    assert msn.encode(views[0]).shape == (B, msn.encoder.embed_dim)


# --- fusion --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_fusion_changes_anchor_output_with_ehr(name: str) -> None:
    msn = make_msn(name)
    if name == "film":  # zero-initialised; give it a non-trivial state as after some training
        fusion = msn.fusion
        assert isinstance(fusion, FiLMFusion)
        with torch.no_grad():
            nn.init.normal_(fusion.gamma.weight, std=0.5)
            nn.init.normal_(fusion.beta.weight, std=0.5)
    views = batch()
    ehr = views[3]
    a1, t1 = run(msn, ehr, views=views)
    a2, t2 = run(msn, ehr + 1.0, views=views)
    assert a1.shape == a2.shape == (B * (1 + F_VIEWS), 16)
    assert torch.equal(a1, a2) == (name == "none")
    assert torch.equal(t1, t2) == (not FUSIONS[name](8, 8).in_target or name == "none")
    if name == "none":
        assert torch.equal(run(msn, None, views=views)[0], a1)  # no EHR needed at all


def test_film_starts_as_identity_and_gets_gradients() -> None:
    fusion = FiLMFusion(dim=6, embed_dim=3)
    cls, e = torch.randn(B, 6), torch.randn(B, 3)
    assert torch.equal(fusion(cls, e), cls)
    msn = make_msn("film")
    anchor, target = run(msn, batch()[3])
    toy_msn_loss(anchor, target, msn.prototypes).backward()
    assert isinstance(msn.fusion, FiLMFusion)
    for layer in (msn.fusion.gamma, msn.fusion.beta):
        assert layer.weight.grad is not None and float(layer.weight.grad.abs().sum()) > 0
    assert msn.ehr_embed is not None and msn.ehr_embed.net.weight.grad is not None


def test_fusion_without_ehr_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs the EHR"):
        run(make_msn("concat_anchor"), None)
    with pytest.raises(ConfigError, match="at least one EHR column"):
        build_fusion("token", dim=8, ehr_width=0, embed_dim=4)


# --- target branch and EMA -----------------------------------------------------------------------------

def _target_params(msn: MultimodalMSN) -> list[nn.Parameter]:
    return [p for name, p in msn.named_parameters() if name.startswith("target_")]


def test_target_gets_no_gradient_and_moves_only_by_ema() -> None:
    msn = make_msn("concat_both")
    targets = _target_params(msn)
    assert targets and not any(p.requires_grad for p in targets)
    before = {n: p.detach().clone() for n, p in msn.named_parameters()}
    opt = torch.optim.AdamW(msn.param_groups(0.04), lr=1e-2)
    anchor, target = run(msn, batch()[3])
    toy_msn_loss(anchor, target, msn.prototypes).backward()
    assert all(p.grad is None for p in targets)
    assert msn.prototypes.grad is not None and float(msn.prototypes.grad.abs().sum()) > 0
    opt.step()
    after = dict(msn.named_parameters())
    moved = {name for name, old in before.items() if not torch.equal(after[name], old)}
    assert not any(name.startswith("target_") for name in moved)
    # every anchor-side weight matrix moved (biases just before a BatchNorm may get exactly zero gradient)
    assert {n for n, p in after.items() if p.requires_grad and p.ndim > 1} <= moved


def test_update_target_is_the_ema_formula() -> None:
    msn = make_msn("concat_both")
    with torch.no_grad():
        for p in msn.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))  # anchor != target
    pairs = {"target_encoder.": "encoder.", "target_head.": "head.", "target_ehr_embed.": "ehr_embed.",
             "target_fusion.": "fusion."}
    params = {n: p.detach().clone() for n, p in msn.named_parameters()}
    msn.update_target(0.9)
    n_checked = 0
    for name, new in msn.named_parameters():
        prefix = next((t for t in pairs if name.startswith(t)), None)
        if prefix is None:
            assert torch.equal(new, params[name]), name  # anchor side and prototypes untouched
            continue
        online = params[pairs[prefix] + name[len(prefix):]]
        assert torch.allclose(new, 0.9 * params[name] + 0.1 * online, atol=1e-6), name
        n_checked += 1
    assert n_checked == len(_target_params(msn))
    assert not any("prototypes" in name for name in pairs)  # prototypes: no EMA copy


def test_anchor_only_fusion_has_no_target_copy() -> None:
    msn = make_msn("concat_anchor")
    assert msn.target_fusion is None and msn.target_ehr_embed is None


# --- timm compatibility and registries -----------------------------------------------------------------

def test_image_encoder_state_dict_loads_into_timm(tmp_path: Path) -> None:
    msn = make_msn().eval()
    msn.update_target(0.5)  # some EMA state, not the init
    path = tmp_path / "encoder.pth"
    torch.save(msn.image_encoder_state_dict(), path)
    vit = timm.create_model("vit_nano", pretrained=False, num_classes=0, in_chans=1, img_size=32,
                            checkpoint_path=str(path)).eval()
    x = torch.randn(B, 1, 32, 32)
    assert torch.allclose(vit(x), msn.encode(x), atol=1e-6)


def test_real_timm_vit_builds_with_patch_override() -> None:
    vit = create_vit("vit_tiny_patch16_224", img_size=32, patch_size=8)
    enc = ViTEncoder(vit)
    assert enc.embed_dim == 192 and enc.n_patches(32) == 16 and vit.patch_embed.proj.in_channels == 1
    assert enc(torch.randn(2, 1, 32, 32)).shape == (2, 192)


def test_registered_sizes_are_timm_vits() -> None:
    for name, dim in (("vit_nano", 64), ("vit_micro", 96)):
        vit = timm.create_model(name)
        assert isinstance(vit, timm.models.vision_transformer.VisionTransformer) and vit.embed_dim == dim


@pytest.mark.parametrize("name", ["resnet50", "vit_does_not_exist", "nano"])
def test_unknown_backbone_lists_valid_names(name: str) -> None:
    with pytest.raises(ConfigError, match="vit_micro, vit_nano.*any timm ViT"):
        create_vit(name, 32)


def test_unknown_fusion_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="concat_anchor, concat_both, film, none, token"):
        build_fusion("late", dim=8, ehr_width=3, embed_dim=4)
    with pytest.raises(ConfigError, match="concat_anchor"):
        make_msn("late")


def test_param_groups_exclude_target_and_skip_decay_on_prototypes_and_biases() -> None:
    msn = make_msn("concat_anchor")
    decay, no_decay = msn.param_groups(0.04)
    assert decay["weight_decay"] == 0.04 and no_decay["weight_decay"] == 0.0 and no_decay["apply_wd"] is False
    names = {id(p): n for n, p in msn.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert {"prototypes", "encoder.vit.pos_embed", "encoder.vit.cls_token"} <= no_decay_names
    # beyond those three, only 1-D parameters (biases, LayerNorm/BatchNorm weights) skip decay
    assert {names[id(p)] for p in no_decay["params"] if p.ndim > 1} == {
        "prototypes", "encoder.vit.pos_embed", "encoder.vit.cls_token"}
    assert all(p.ndim > 1 for p in decay["params"])
    biases = {n for n in names.values() if n.endswith(".bias") and not n.startswith("target_")}
    assert biases <= no_decay_names
    assert "encoder.vit.blocks.0.attn.qkv.weight" in decay_names and "head.layers.0.weight" in decay_names
    trainable = {n for n, p in msn.named_parameters() if p.requires_grad}
    assert decay_names | no_decay_names == trainable and not decay_names & no_decay_names


def test_head_and_prototypes() -> None:
    head = ProjectionHead(8, 16, 4)
    assert head(torch.randn(3, 8)).shape == (3, 4)
    protos = init_prototypes(10, 16)
    assert protos.shape == (10, 16) and protos.requires_grad and float(protos.detach().abs().max()) <= 0.25
