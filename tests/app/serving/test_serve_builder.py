"""``prefloop.app.serving.serve:build_app``, the Serve config builder KubeRay's RayService names (no Ray started)."""

import pytest

from prefloop.app.serving.serve import build_app
from tests.builders import served_run

pytestmark = pytest.mark.models  # loads models in-process (no Ray): deselected by `make test-fast`


@pytest.fixture
def run_dir(tmp_path, tiny_assets, monkeypatch):
    monkeypatch.setenv("PREFLOOP_API_KEY", "builder-test-key")  # a RayService binds 0.0.0.0: a key is required
    recipe = {"name": "b", "run_dir": str(tmp_path), "policy": {"model": str(tiny_assets.policy)},
              "data": {"train": "p.jsonl"}, "scorer": {"kind": "pairrm", "model": str(tiny_assets.pairrm)},
              "resources": {"generator_gpus": 1}}
    return served_run(tmp_path, recipe, {0: tiny_assets.policy, 1: tiny_assets.policy}).root


def deployment(app):
    return app._bound_deployment  # Serve's Application wraps the bound deployment


def test_build_app_serves_the_latest_round_with_the_recipe_settings(run_dir):
    latest = deployment(build_app({"run_dir": str(run_dir), "replicas": 2}))
    first = deployment(build_app({"run_dir": str(run_dir), "round": 0, "replicas": 2}))
    config = dict(latest.user_config)
    # with Ray up (another test started it), the weights also travel through a model store named after them
    store = config.pop("model_store", None)
    assert store is None or store.startswith("prefloop-model-store-")
    assert config == {"model_dir": str((run_dir / "round_1" / "model").resolve()), "round": 1, "step": None}
    assert first.user_config["round"] == 0
    assert latest.num_replicas == 2 and latest.ray_actor_options["num_gpus"] == 1
    assert latest.version == first.version  # another round is a user_config change: swapped in place
    assert deployment(build_app({"run_dir": str(run_dir), "replica_gpus": 0})).ray_actor_options["num_gpus"] == 0


def test_build_app_names_bad_args(run_dir):
    with pytest.raises(ValueError, match="need run_dir"):
        build_app({"round": 1,
                                  "step": None})
    with pytest.raises(ValueError, match="bogus"):
        build_app({"run_dir": str(run_dir), "bogus": 1})
    with pytest.raises(FileNotFoundError, match="round 5 has no committed model"):
        build_app({"run_dir": str(run_dir), "round": 5})


def test_build_app_without_a_key_refuses_unless_insecure(run_dir, monkeypatch):
    from prefloop.core.serve_guard import ServeConfigError

    monkeypatch.delenv("PREFLOOP_API_KEY")
    with pytest.raises(ServeConfigError, match="without an API key"):
        build_app({"run_dir": str(run_dir)})
    assert deployment(build_app({"run_dir": str(run_dir), "insecure": True})).user_config["round"] == 1
    monkeypatch.setenv("PREFLOOP_API_KEY", "")  # a Secret that resolved to nothing
    with pytest.raises(ServeConfigError, match="set but empty"):
        build_app({"run_dir": str(run_dir), "insecure": True})
