"""Paths of the checkout that tests read (recipes, bench scripts, cluster files), from one root, so that a test's
depth under tests/ does not matter."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root: tests/ sits directly under it
RECIPES = ROOT / "recipes"
