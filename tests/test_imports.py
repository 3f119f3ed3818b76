"""Imports point one way: mmsn (and loading a search space) never pulls in Ray or Optuna."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import mmsn, mmsn.cli, mmsn.engine, mmsn.pretrain, mmsn.evaluate, mmsn.models, mmsn.data.prepare
from search_spaces import load_space, shipped_spaces
for path in shipped_spaces():
    load_space(path)
loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'optuna'))
print(loaded)
sys.exit(1 if loaded else 0)
"""


def test_mmsn_and_space_loading_import_neither_ray_nor_optuna() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
