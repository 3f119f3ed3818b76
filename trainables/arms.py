"""A trial's arm, built once and stored with the trial (``arm.json`` in its directory), where the analysis
reads it instead of rebuilding the trial's config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmsn.config import Config
from search_spaces.loader import Space

ARM_FILE = "arm.json"


def record_arm(space: Space, params: dict[str, Any], cfg: Config, trial_dir: Path) -> dict[str, Any]:
    """The trial's arm (search_spaces.loader.Space.describe), written to ``trial_dir/arm.json`` once."""
    path = trial_dir / ARM_FILE
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (OSError, json.JSONDecodeError):
        pass
    arm = space.describe(params, cfg)
    trial_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{ARM_FILE}.tmp")
    tmp.write_text(json.dumps(arm, indent=1))
    tmp.replace(path)
    return arm


__all__ = ["ARM_FILE", "record_arm"]
