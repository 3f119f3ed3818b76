"""Declarative YAML search spaces and ablation grids, validated against mmsn's config dataclasses.

Loading a space needs neither Ray nor Optuna: ``load_space(path)`` checks every key against
``mmsn.config`` and raises ConfigError naming the key and the file.
"""

from search_spaces.loader import Axis, Space, load_space, shipped_spaces

__all__ = ["Axis", "Space", "load_space", "shipped_spaces"]
