"""Fixtures shared by every test: no model hub, and the tiny offline assets built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded, in any test


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """The demo's tiny policy / PairRM / reward model (``prefloop.tinyworld.assets``), built once per session
    (~1-2 min on 2 cores), or reused from ``$PREFLOOP_TEST_ASSETS`` across sessions."""
    from prefloop.tinyworld.assets import build_assets

    root = os.environ.get("PREFLOOP_TEST_ASSETS")
    return build_assets(Path(root) if root else tmp_path_factory.mktemp("assets") / "tiny")
