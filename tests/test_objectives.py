"""Objectives as a config axis: registry, config sections, every objective x fusion trains, exports a
timm encoder and probes; the backbone's intermediate tokens; an MSN run directory written before
objectives existed still resumes and probes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from torch.utils.data import default_collate

from mmsn.checkpoint import load_encoder
from mmsn.cli import main as mmsn_main
from mmsn.config import Config, from_dict, load_config, objective_sections, to_dict
from mmsn.data.cache import open_cache
from mmsn.engine import build_run, train_step
from mmsn.errors import ConfigError
from mmsn.models.backbone import ViTEncoder, create_vit, random_token_mask
from mmsn.models.fusion import FUSIONS
from mmsn.objectives import OBJECTIVES, SPECS, Batch
from mmsn.objectives.mlvicx import level_blocks
from mmsn.pretrain import pretrain
from tests.conftest import TINY_RUN

FIXTURES = Path(__file__).parent / "fixtures"
SSL = ("vicreg", "mlvicx", "dino", "mae", "mrm_ehr", "supcon_ehr", "msn_supcon", "byol")
# every objective with no fusion and with the fusion that touches the most (both branches); every fusion
# with the two objective families (EMA target; no target)
COMBOS = sorted({*((o, f) for o in SPECS for f in ("none", "concat_both")),
                 *((o, f) for o in ("msn", "vicreg") for f in FUSIONS)})


def tiny(objective: str, *extra: str) -> Config:
    return load_config(None, [*TINY_RUN, f"objective.name={objective}", *extra])


def first_batch(run, n: int = 32) -> Batch:  # type: ignore[no-untyped-def]
    return Batch(**default_collate([run.train_set[k] for k in range(n)]))


def test_registry_matches_the_config_sections() -> None:
    assert set(OBJECTIVES) == set(SPECS) == {"msn", *SSL}
    # every section an objective reads is some objective's own section of the config
    assert {s for spec in SPECS.values() for s in spec.sections} == set(objective_sections()) <= set(to_dict(Config()))


def test_unknown_objective_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"objective.name 'simclr'; valid: byol, dino, mae, mlvicx, mrm_ehr, "
                                          r"msn, msn_supcon, supcon_ehr, vicreg"):
        load_config(None, ["objective.name=simclr"])


def test_key_of_an_unselected_objective_names_key_and_selection(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("objective: {name: vicreg}\nmsn: {temperature: 0.2}\n")
    with pytest.raises(ConfigError, match=rf"{path}: msn.temperature: read only by objective msn / msn_supcon, "
                                          r"but objective.name is 'vicreg'"):
        load_config(path)
    with pytest.raises(ConfigError, match="defaults: dino.teacher_temp: read only by objective dino, but "
                                          "objective.name is 'msn'"):
        load_config(None, ["dino.teacher_temp=0.07"])
    assert load_config(None, ["objective.name=dino", "dino.teacher_temp=0.07"]).dino.teacher_temp == 0.07


@pytest.mark.parametrize("override, key", [("mlvicx.multi_level_weight=-1", "mlvicx.multi_level_weight"),
                                           ("vicreg.var_weight=-2", "vicreg.var_weight"),
                                           ("mlvicx.levels=[0, 0.5]", "mlvicx.levels"),
                                           ("dino.center_momentum=1.5", "dino.center_momentum")])
def test_out_of_range_weights_name_the_key(override: str, key: str) -> None:
    name = key.split(".")[0]
    with pytest.raises(ConfigError, match=key):
        load_config(None, [f"objective.name={name}", override])


def test_legacy_keys_land_in_msn_section() -> None:
    cfg = load_config(FIXTURES / "legacy_msn_config.yaml", ["loss.temperature=0.2"])
    assert cfg.objective.name == "msn" and cfg.msn.temperature == 0.2 and cfg.msn.ema_start == 0.996
    assert "loss" not in to_dict(cfg) and "ema_start" not in to_dict(cfg)["optim"]
    assert from_dict(Config, to_dict(cfg)) == cfg


@pytest.mark.parametrize("objective, fusion", COMBOS)
def test_every_objective_trains_with_every_fusion(synthetic_cache: Path, objective: str, fusion: str) -> None:
    cfg = tiny(objective, f"ehr.fusion={fusion}", "optim.warmup_epochs=0", "optim.start_lr=1e-3")
    run = build_run(cfg, open_cache(synthetic_cache))
    batch = first_batch(run)
    before = {k: v.clone() for k, v in run.objective.state_dict().items()}
    scalars = train_step(run, batch)
    assert torch.isfinite(torch.tensor(scalars["loss"]))
    assert set(run.objective.part_names) <= set(scalars)
    after = run.objective.state_dict()
    online = [k for k in after if k == "encoder.vit.blocks.0.attn.qkv.weight"]
    assert online and not torch.equal(before[online[0]], after[online[0]]), "the online encoder did not train"
    if fusion != "none":  # the EHR reaches the loss: its embedding gets a gradient and moves
        moved = [k for k in after if k.startswith("ehr_embed.") and not torch.equal(before[k], after[k])]
        assert moved, "the EHR embedding did not train"


@pytest.mark.parametrize("objective", ["msn", "dino"])
def test_ema_target_moves_only_by_ema(synthetic_cache: Path, objective: str) -> None:
    run = build_run(tiny(objective), open_cache(synthetic_cache))
    target = run.objective.eval_encoder()
    assert target is not run.objective.encoder and not any(p.requires_grad for p in target.parameters())
    old_t = [p.clone() for p in target.parameters()]
    m = train_step(run, first_batch(run))["ema"]
    # the EMA step uses the online weights after the optimiser step
    for t0, o1, t1 in zip(old_t, run.objective.encoder.parameters(), target.parameters()):
        assert torch.allclose(t1, m * t0 + (1 - m) * o1.detach(), atol=1e-6)


def test_byol_target_moves_by_ema_and_its_online_encoder_is_probed(synthetic_cache: Path) -> None:
    run = build_run(tiny("byol"), open_cache(synthetic_cache))
    byol = run.objective
    assert byol.eval_encoder() is byol.encoder and not any(p.requires_grad for p in byol.target_encoder.parameters())
    assert not hasattr(byol, "target_predictor")  # the predictor is online only (BYOL's asymmetry)
    old = [p.clone() for p in (*byol.target_encoder.parameters(), *byol.target_head.parameters())]
    m = train_step(run, first_batch(run))["ema"]
    online = [*byol.encoder.parameters(), *byol.head.parameters()]
    target = [*byol.target_encoder.parameters(), *byol.target_head.parameters()]
    assert len(old) == len(online) == len(target) and 0.99 <= m < 1
    for t0, o1, t1 in zip(old, online, target):
        assert torch.allclose(t1, m * t0 + (1 - m) * o1.detach(), atol=1e-6)


def test_vicreg_has_no_target_and_probes_its_online_encoder(synthetic_cache: Path) -> None:
    run = build_run(tiny("vicreg"), open_cache(synthetic_cache))
    assert run.objective.eval_encoder() is run.objective.encoder
    assert not any("target" in k or "teacher" in k for k in run.objective.state_dict())


def test_dino_centre_follows_the_teacher_and_last_layer_can_be_frozen(synthetic_cache: Path) -> None:
    run = build_run(tiny("dino", "dino.freeze_last_layer_epochs=1"),
                    open_cache(synthetic_cache))
    dino = run.objective
    last = [p.clone() for p in dino.head.last_layer.parameters() if p.requires_grad]
    assert torch.count_nonzero(dino.center) == 0
    train_step(run, first_batch(run))
    assert torch.count_nonzero(dino.center) > 0
    assert all(torch.equal(a, b) for a, b in zip(last, (p for p in dino.head.last_layer.parameters()
                                                         if p.requires_grad)))


def test_mlvicx_levels_map_fractions_to_blocks() -> None:
    assert level_blocks(12, (0.25, 0.5, 0.75, 1.0)) == [2, 5, 8, 11]
    assert level_blocks(4, (0.25, 0.5, 0.75, 1.0)) == [0, 1, 2, 3]
    assert level_blocks(2, (0.25, 0.5, 0.75, 1.0)) == [0, 1]


def test_intermediate_tokens_equal_timm_and_masking_is_unchanged() -> None:
    import mmsn.models  # noqa: F401

    torch.manual_seed(0)
    enc = ViTEncoder(create_vit("vit_nano", 32)).eval()
    x = torch.randn(3, 1, 32, 32)
    final, levels = enc.forward_tokens(x, indices=[0, 1])
    ref = enc.vit.forward_intermediates(x, indices=[0, 1], norm=False, output_fmt="NLC", intermediates_only=True,
                                        return_prefix_tokens=True)
    for ours, (patches, prefix) in zip(levels, ref):
        assert torch.allclose(ours, torch.cat([prefix, patches], dim=1), atol=1e-6)
    assert torch.allclose(final[:, 0], enc.vit(x), atol=1e-6)
    keep = random_token_mask(3, 16, 0.5, True, generator=torch.Generator().manual_seed(0))
    masked, levels = enc.forward_tokens(x, keep, indices=[1])
    assert masked.shape == (3, 1 + 8, 64) and levels[0].shape == masked.shape
    assert torch.allclose(masked[:, 0], enc(x, keep), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["msn", *SSL])
def test_pretrain_exports_timm_encoder_and_probes(synthetic_cache: Path, tmp_path: Path, objective: str) -> None:
    out = tmp_path / objective
    assert mmsn_main(["pretrain", "--data", str(synthetic_cache), "--out", str(out),
                      *sum((["--set", s] for s in [*TINY_RUN, f"objective.name={objective}"]), [])]) == 0
    import mmsn.models  # noqa: F401  registers vit_nano with timm

    vit = timm.create_model("vit_nano", in_chans=1, num_classes=0, img_size=32,
                            checkpoint_path=str(out / "encoder.pth")).eval()
    encoder, cfg = load_encoder(out)
    x = torch.randn(2, 1, 32, 32)
    assert cfg.objective.name == objective and torch.allclose(vit(x), encoder(x), atol=1e-5)
    assert mmsn_main(["probe", "--checkpoint", str(out), "--data", str(synthetic_cache),
                      "--out", str(tmp_path / "probe.json"), "--split", "test"]) == 0
    assert 0 <= json.loads((tmp_path / "probe.json").read_text())["macro_auroc"] <= 1


def _make_legacy(run_dir: Path) -> None:
    """Turn a run directory into one written before objectives existed: the config in config.yaml and in
    checkpoint.pt becomes the committed legacy layout (loss.*, optim.ema_*; no objective sections)."""
    legacy = yaml.safe_load((FIXTURES / "legacy_msn_config.yaml").read_text())
    (run_dir / "config.yaml").write_text(yaml.safe_dump(legacy, sort_keys=False))
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    state["config"] = legacy
    torch.save(state, run_dir / "checkpoint.pt")


def test_legacy_msn_run_directory_resumes_and_probes(synthetic_cache: Path, tmp_path: Path) -> None:
    cache = open_cache(synthetic_cache)
    cfg = load_config(FIXTURES / "legacy_msn_config.yaml")
    assert cfg == load_config(None, TINY_RUN) and cfg.train.epochs == 2
    pretrain(cfg, cache, tmp_path / "straight", log=lambda _: None)

    def stop_after_first(run, metrics) -> None:  # type: ignore[no-untyped-def]
        if run.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, cache, tmp_path / "old", log=lambda _: None, on_epoch=stop_after_first)
    _make_legacy(tmp_path / "old")
    lines: list[str] = []
    pretrain(load_config(FIXTURES / "legacy_msn_config.yaml"), cache, tmp_path / "old", log=lines.append)
    assert any("resumed" in line and "epoch 1" in line for line in lines)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "old" / "checkpoint.pt", weights_only=False)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert mmsn_main(["probe", "--checkpoint", str(tmp_path / "old"), "--data", str(synthetic_cache),
                      "--out", str(tmp_path / "probe.json")]) == 0


def test_space_axes_of_an_objective_need_its_condition(tmp_path: Path) -> None:
    from search_spaces.loader import grid_points, load_space

    path = tmp_path / "space.yaml"
    body = ("axes:\n  objective.name: {choice: [msn, vicreg]}\n"
            "  vicreg.var_weight: {choice: [10.0, 25.0]%s}\n")
    path.write_text(body % "")
    with pytest.raises(ConfigError, match=rf"{path}: vicreg.var_weight: read only by objective vicreg, "
                                          r"but objective.name is 'msn'"):
        load_space(path)
    path.write_text(body % ", when: {objective.name: [vicreg]}")
    space = load_space(path)
    cfgs = [space.config(p) for p in grid_points(space)]
    assert sorted((c.objective.name, c.vicreg.var_weight) for c in cfgs) == [
        ("msn", 25.0), ("vicreg", 10.0), ("vicreg", 25.0)]


def test_a_recipe_file_may_carry_msn_settings_for_another_objective() -> None:
    from search_spaces.loader import CONFIGS

    cfg = load_config(CONFIGS / "quickstart.yaml", ["objective.name=dino"])
    assert cfg.objective.name == "dino" and cfg.msn.ema_start == 0.98  # inert for DINO, not an error


def test_mae_scores_only_masked_patches_of_normalised_pixels() -> None:
    from mmsn.objectives.mae import masked_patch_mse, patchify

    x = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    patches = patchify(x, 8)  # (2, 4, 64), row-major patches
    assert patches.shape == (2, 4, 64) and torch.equal(patches[0, 1], x[0, 0, :8, 8:].reshape(-1))
    keep = torch.tensor([[0], [3]])  # visible patch per image
    pred = torch.zeros_like(patches)
    base = masked_patch_mse(pred, patches, keep, norm_pix=True)
    pred_visible = pred.clone()
    pred_visible[0, 0] += 100.0
    pred_visible[1, 3] -= 100.0
    assert torch.equal(masked_patch_mse(pred_visible, patches, keep, norm_pix=True), base)  # visible: not scored
    # a zero prediction of standardised patches: (P - 1) / P, MAE standardises with the unbiased variance
    assert torch.allclose(base, torch.tensor(63 / 64), atol=1e-5)
    assert masked_patch_mse(pred, patches, keep, norm_pix=False) > 1000


def test_record_loss_never_scores_missing_or_visible_fields() -> None:
    from mmsn.objectives.mrm import mask_fields, record_loss

    targets = torch.tensor([[1.0, float("nan"), 0.5], [0.0, 2.0, float("nan")]])  # cat(2), cat(3), continuous
    classes = (2, 3, 0)
    logits = [torch.zeros(2, 2), torch.zeros(2, 3), torch.zeros(2, 1)]
    masked = torch.tensor([[True, True, False], [False, True, True]])
    # scored: (0, field 0) CE log 2, (1, field 1) CE log 3; (0, 1) and (1, 2) are missing, the rest visible
    expected = (torch.log(torch.tensor(2.0)) + torch.log(torch.tensor(3.0))) / 2
    assert torch.allclose(record_loss(logits, targets, masked, classes), expected)
    assert record_loss(logits, targets, torch.zeros_like(masked), classes) == 0
    hidden = mask_fields(torch.zeros(5, 6), 0.5, torch.Generator().manual_seed(0))
    assert hidden.sum(dim=1).tolist() == [3] * 5
    assert mask_fields(torch.zeros(2, 3), 0.01, None).sum(dim=1).tolist() == [1, 1]  # at least one field


def test_masked_field_is_not_a_missing_indicator() -> None:
    from mmsn.objectives.mrm import MRMConfig, RecordDecoder

    torch.manual_seed(0)
    dec = RecordDecoder(8, (2, 0), MRMConfig(width=16, heads=4, depth=1)).eval()
    image = torch.randn(1, 8)
    missing = dec(image, torch.tensor([[float("nan"), 0.3]]), torch.tensor([[False, False]]))
    masked = dec(image, torch.tensor([[1.0, 0.3]]), torch.tensor([[True, False]]))
    masked_missing = dec(image, torch.tensor([[float("nan"), 0.3]]), torch.tensor([[True, False]]))
    assert not torch.allclose(missing[1], masked[1])  # the model can tell "hidden" from "unknown"
    assert torch.allclose(masked[1], masked_missing[1])  # a hidden field reveals nothing of its value


def test_ehr_as_target_is_independent_of_ehr_as_input(synthetic_cache: Path) -> None:
    run = build_run(tiny("mrm_ehr", "ehr.fusion=none"), open_cache(synthetic_cache))
    batch = first_batch(run)
    assert batch.ehr is None and batch.ehr_targets is not None and batch.ehr_targets.shape[1] == 6
    # categorical first (sex F/M, view PA/AP in NIH-14, hosp_death, icu), then continuous (age, followup)
    assert run.objective.record.classes == (2, 2, 2, 2, 0, 0)
    run = build_run(tiny("supcon_ehr", "supcon.labels=[image, sex, age]", "supcon.weights=[0.5, 1, 2]",
                         "ehr.fusion=film"), open_cache(synthetic_cache))
    batch = first_batch(run)
    labels = batch.pseudo_labels
    assert batch.ehr is not None and labels is not None and labels.shape == (32, 3)
    # columns follow supcon.labels (and so its weights): image rows unique, sex in {F, M}, age in 4 bins
    assert labels[:, 0].unique().numel() == 32 and set(labels[:, 1].tolist()) <= {-1, 0, 1}
    assert set(labels[:, 2].tolist()) <= {-1, 0, 1, 2, 3} and labels[:, 2].unique().numel() > 2


@pytest.mark.slow
def test_patient_pseudo_labels_leave_no_patient_id_in_the_run(synthetic_cache: Path, tmp_path: Path) -> None:
    cfg = tiny("supcon_ehr", "supcon.labels=[patient, sex]")
    pretrain(cfg, open_cache(synthetic_cache), tmp_path / "run", log=lambda _: None)
    ids = set(open_cache(synthetic_cache).table["patient_id"].astype(str))
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file() and path.suffix not in (".pt", ".pth"):
            text = path.read_bytes().decode("latin-1")
            assert not [i for i in ids if len(i) > 3 and i in text], path
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert not [i for i in ids if len(i) > 3 and i in repr(state["config"]) + repr(state["ehr_encoder"])]


def test_probe_features_cls_cls_mean_and_last_blocks() -> None:
    import mmsn.models  # noqa: F401

    torch.manual_seed(0)
    enc = ViTEncoder(create_vit("vit_nano", 32)).eval()  # depth 2, d 64
    x = torch.randn(3, 1, 32, 32)
    tokens = enc.vit.forward_features(x)  # timm: final normed tokens, CLS first
    assert torch.allclose(enc.probe_features(x, "cls"), tokens[:, 0], atol=1e-6)
    both = enc.probe_features(x, "cls_mean")
    assert both.shape == (3, 128)
    assert torch.allclose(both[:, 64:], tokens[:, 1:].mean(dim=1), atol=1e-6)
    # the last block's CLS through the final norm is the plain CLS feature; k = depth adds block 0's
    assert torch.allclose(enc.probe_features(x, "last_cls", last_blocks=1), tokens[:, 0], atol=1e-6)
    first = enc.vit.forward_intermediates(x, indices=[0], norm=True, output_fmt="NLC", intermediates_only=True,
                                          return_prefix_tokens=True)[0][1][:, 0]
    two = enc.probe_features(x, "last_cls", last_blocks=2)
    assert two.shape == (3, 128)
    assert torch.allclose(two[:, :64], first, atol=1e-6) and torch.allclose(two[:, 64:], tokens[:, 0], atol=1e-6)
    with pytest.raises(ConfigError, match="probe.last_blocks: 3 but the backbone has 2 blocks"):
        enc.probe_features(x, "last_cls", last_blocks=3)
