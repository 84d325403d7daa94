"""Fixtures shared by every test: no model hub, and the tiny offline assets built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded, in any test


# One assets dir for the whole session: the fixture below and every recipe a test resolves with ``--tiny``
# (app/cli.resolve_recipe builds into ``$PREFLOOP_ASSETS``) must use the same, or a session builds them twice.
if os.environ.get("PREFLOOP_TEST_ASSETS"):
    os.environ["PREFLOOP_ASSETS"] = os.environ["PREFLOOP_TEST_ASSETS"]


@pytest.fixture(scope="session")
def tiny_assets():
    """The demo's tiny policy / PairRM / reward model (``prefloop.tinyworld.assets``), built once into
    ``$PREFLOOP_TEST_ASSETS``, else ``$PREFLOOP_ASSETS``, else ``~/.cache/prefloop/assets`` (the demo's cache):
    a few minutes on 2 cores the first time, then reused across sessions."""
    from prefloop.tinyworld.assets import build_assets, default_assets_dir

    return build_assets(default_assets_dir())
