"""A run directory: what ``mmsn pretrain`` writes and ``mmsn probe`` / sweeps read.

``RUN_DIR/checkpoint.pt``  full state to resume bit for bit (mmsn.engine.state_dict)
``RUN_DIR/encoder.pth``    the image-only target encoder as a timm state dict:
                           ``timm.create_model(name, in_chans=1, num_classes=0, img_size=S,
                           checkpoint_path=RUN_DIR/encoder.pth)`` loads it (after ``import mmsn.models``
                           for mmsn's own small configs)
``RUN_DIR/config.yaml``    the resolved config
``RUN_DIR/run.json``       progress: epochs done, steps, last metrics, data cache
Files are written to a temporary name and renamed, so a crash never leaves a torn checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from mmsn.config import Config, from_dict, to_dict
from mmsn.errors import ConfigError, MMSNError

CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.pth"
CONFIG = "config.yaml"
RUN_INFO = "run.json"


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def save_run(out: Path, state: dict[str, Any], encoder: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Write checkpoint, encoder, config and run info atomically (each file on its own)."""
    out.mkdir(parents=True, exist_ok=True)
    _atomic(out / CHECKPOINT, lambda p: torch.save(state, p))
    _atomic(out / ENCODER, lambda p: torch.save(encoder, p))
    _atomic(out / CONFIG, lambda p: p.write_text(yaml.safe_dump(state["config"], sort_keys=False)))
    write_run_info(out, info)


def write_run_info(out: Path, info: dict[str, Any]) -> None:
    """``out/run.json``, atomically (a probe beside training adds its results to a written state's)."""
    _atomic(out / RUN_INFO, lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))


def has_checkpoint(out: Path) -> bool:
    return (out / CHECKPOINT).is_file()


def load_state(out: Path) -> dict[str, Any]:
    try:
        return torch.load(out / CHECKPOINT, map_location="cpu", weights_only=False)  # type: ignore[no-any-return]
    except Exception as err:  # a truncated or foreign file: say which
        raise MMSNError(f"{out / CHECKPOINT}: cannot load checkpoint ({err})") from None


def run_config(out: Path) -> Config:
    """The config a run directory was trained with."""
    path = out / CONFIG
    if not path.is_file():
        raise MMSNError(f"{path}: missing; is {out} a run directory written by 'mmsn pretrain'?")
    try:
        return from_dict(Config, yaml.safe_load(path.read_text()) or {})  # type: ignore[no-any-return]
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def config_differences(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out
    fa, fb = flat(to_dict(a)), flat(to_dict(b))
    return [k for k in fa if fa[k] != fb.get(k)]


def load_encoder(out: Path, random_init: bool = False) -> tuple[torch.nn.Module, Config]:
    """The image-only target encoder of a run, built through timm from ``encoder.pth``.

    ``random_init`` gives the same architecture with fresh weights (seeded by train.seed): the
    baseline a pretrained encoder has to beat.
    """
    from mmsn.models.backbone import ViTEncoder, create_vit

    cfg = run_config(out)
    torch.manual_seed(cfg.train.seed)
    vit = create_vit(cfg.model.backbone, cfg.views.size, cfg.model.patch_size)
    if not random_init:
        if not (out / ENCODER).is_file():
            raise MMSNError(f"{out / ENCODER}: missing; the run has not finished an epoch yet")
        vit.load_state_dict(torch.load(out / ENCODER, map_location="cpu", weights_only=True))
    return ViTEncoder(vit).eval(), cfg
