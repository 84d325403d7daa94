"""The tiny assets' parts on demand (``tinyworld/assets.py``): which parts a recipe names, and a cache that builds
only what is missing. The three trainers are replaced by stand-ins that write a directory and count their calls
(the real ones take minutes; tests/tinyworld/test_assets.py checks what they build), so what is tested here is the
cache: which builders run, with which policy, and what the marker says."""

import json

import pytest

from prefloop.tinyworld import assets, judges, policy


@pytest.fixture
def calls(monkeypatch):
    """Stand-in builders: each records (part, policy dir it started from) and writes its part's directory."""
    made: list[tuple[str, str | None]] = []

    def builder(part):
        def build(out, tok, seed, *rest):
            policy_dir = str(rest[-1]) if part != "policy" else None
            made.append((part, policy_dir))
            out.mkdir(parents=True)
            (out / "weights").write_text(f"{part} seed {seed}")
            if part == "pairrm":
                (out / "config.json").write_text(json.dumps({"model_name": "backbone"}))
            return {f"{part}_acc_marked": 0.8}
        return build

    monkeypatch.setattr(policy, "build_policy", builder("policy"))
    monkeypatch.setattr(judges, "build_pairrm", builder("pairrm"))
    monkeypatch.setattr(judges, "build_reward", builder("reward"))
    monkeypatch.setattr(assets, "_tokenizer", lambda seed, policy_dir: [0] * 7)
    return made


def test_parts_used_names_the_parts_under_the_assets_dir(tmp_path):
    root = tmp_path / "assets"
    values = {"policy": {"model": f"{root}/policy"}, "scorer": {"model": f"{root}/pairrm", "kind": "pairrm"},
              "other": [f"{tmp_path}/elsewhere/reward", f"{root}/notapart/x", f"{root}x/reward"], "n": 3}
    assert assets.parts_used(values, root) == {"policy", "pairrm"}
    assert assets.parts_used({"scorer": {"model": f"{root}/reward"}}, root) == {"reward"}


def test_the_demo_recipe_needs_the_policy_and_pairrm_only(tmp_path):
    from prefloop.app.front.demo import DEMO_RECIPE
    from prefloop.core.config import load_recipe

    recipe = load_recipe(str(DEMO_RECIPE), [], {"assets": str(tmp_path), "data": str(tmp_path)})
    assert assets.parts_used(recipe.model_dump(), tmp_path) == {"policy", "pairrm"}


def test_builds_only_what_is_asked_then_adds_the_rest(tmp_path, calls):
    root = tmp_path / "a"
    assets.build_assets(root, parts=["pairrm"])
    assert [c[0] for c in calls] == ["policy", "pairrm"]
    assert ".a.build-" in calls[1][1] and calls[1][1].endswith("policy")  # the policy built beside it
    marker = assets.read_marker(root)
    assert marker["parts"] == ["policy", "pairrm"] and not (root / "reward").exists()
    assert assets.built_parts(root, 0) == {"policy", "pairrm"}

    calls.clear()
    assets.build_assets(root, parts=["pairrm"])  # cached: nothing runs
    assets.build_assets(root, parts=["policy"])
    assert calls == []

    assets.build_assets(root)  # all three: only the reward model is missing, built from the policy in place
    assert calls == [("reward", str(root / "policy"))]
    marker = assets.read_marker(root)
    assert marker["parts"] == ["policy", "pairrm", "reward"]
    assert marker["pairrm_acc_marked"] == 0.8 and marker["reward_acc_marked"] == 0.8  # both builds' figures
    assert (root / "reward" / "weights").read_text() == "reward seed 0"
    assert json.loads((root / "pairrm" / "config.json").read_text())["model_name"] == str(root / "pairrm" / "backbone")
    assert not list(tmp_path.glob(".a.build-*"))


def test_a_marker_without_parts_holds_all_three_and_another_seed_rebuilds(tmp_path, calls):
    root = tmp_path / "a"
    for part in assets.PARTS:
        (root / part).mkdir(parents=True)
    (root / assets.MARKER).write_text(json.dumps({"format": assets.FORMAT_VERSION, "seed": 0}))
    assets.build_assets(root)
    assert calls == []  # a build from before parts were recorded: complete
    assets.build_assets(root, seed=1, parts=["reward"])
    assert [c[0] for c in calls] == ["policy", "reward"]
    assert assets.read_marker(root)["seed"] == 1 and not (root / "pairrm").exists()


def test_an_unlisted_part_dir_is_rebuilt_and_unknown_parts_are_refused(tmp_path, calls):
    root = tmp_path / "a"
    assets.build_assets(root, parts=["policy"])
    (root / "reward").mkdir()  # left by an add that died before its marker was written
    (root / "reward" / "weights").write_text("half")
    assert assets.built_parts(root, 0) == {"policy"}
    assets.build_assets(root, parts=["reward"])
    assert (root / "reward" / "weights").read_text() == "reward seed 0"
    with pytest.raises(ValueError, match="unknown tiny asset part.*'critic'"):
        assets.build_assets(root, parts=["critic"])


def test_a_rebuild_keeps_the_imported_models_beside_the_parts(tmp_path, calls, monkeypatch):
    """`prefloop model import` caches real models in the same dir (imported/): a rebuild after a format change must
    neither refuse that dir nor delete the imported models."""
    root = tmp_path / "a"
    assets.build_assets(root, parts=["policy"])
    (root / "imported" / "smollm2").mkdir(parents=True)
    (root / "imported" / "smollm2" / "config.json").write_text("{}")
    monkeypatch.setattr(assets, "FORMAT_VERSION", assets.FORMAT_VERSION + 1)  # the cached build is now stale
    assets.build_assets(root, parts=["policy"])
    assert [c[0] for c in calls] == ["policy", "policy"]
    assert (root / "imported" / "smollm2" / "config.json").read_text() == "{}"
    assert assets.read_marker(root)["format"] == assets.FORMAT_VERSION
