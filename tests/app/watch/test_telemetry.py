"""Telemetry without Ray: the tracking section is validated, TensorBoard event files and a local MLflow file
store are written and read back with TensorBoard's and MLflow's own readers, a missing library is a clear error,
and a committed round's files become the metrics the gauges take."""

import json
import sys

import pytest

from prefloop.app.watch.telemetry import Telemetry
from prefloop.core.config import RecipeError, parse_recipe

BASE = {"name": "tel", "run_dir": "runs/tel", "policy": {"model": "m"}, "data": {"train": "p"},
        "scorer": {"kind": "pairrm", "model": "r"}}


def recipe(tmp_path, **tracking):
    return parse_recipe({**BASE, "run_dir": str(tmp_path / "run"), "tracking": tracking}, "t.yaml")


def test_tracking_defaults_to_none(tmp_path):
    assert parse_recipe(BASE, "t.yaml").tracking.backend == "none"


@pytest.mark.parametrize("tracking, key", [({"backend": "neptune"}, "tracking.backend"),
                                           ({"backend": "mlflow", "url": "x"}, "tracking.url: unknown key"),
                                           ({"backend": "wandb", "uri": "http://x"}, "tracking.uri")])
def test_bad_tracking_section_names_the_key(tracking, key):
    with pytest.raises(RecipeError) as err:
        parse_recipe({**BASE, "tracking": tracking}, "t.yaml")
    assert key in str(err.value) and "t.yaml" in str(err.value)


def test_missing_library_names_the_recipe_key_and_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(RecipeError) as err:
        Telemetry.start(recipe(tmp_path, backend="wandb"), tmp_path / "run")
    assert "tracking.backend" in str(err.value) and "pip install wandb" in str(err.value)


def read_tensorboard(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_files_read_back(tmp_path):
    tel = Telemetry.start(recipe(tmp_path, backend="tensorboard"), tmp_path / "run")
    tel.activity("rollout")  # gauges too when Ray is initialised (the whole suite), a no-op otherwise
    tel.round_done(0, {"pairs": 10, "win_rate": 0.5, "mean_score": -0.25, "tokens_per_s": {"rollout": 900.0},
                       "timings_s": {"train": 3.0}, "method": "dpo", "serve_swap_s": None})
    tel.round_done(1, {"pairs": 12, "win_rate": 0.75, "mean_score": 0.5, "tokens_per_s": {"rollout": 1000.0}})
    tel.remax_step(3, {"reward_sample": 0.2, "reward_greedy": 0.1, "kl": 0.01, "generate_s": 1.5})
    tel.close()
    scalars = read_tensorboard(tmp_path / "run" / "tensorboard")
    assert scalars["round/win_rate"] == [(0, 0.5), (1, 0.75)]
    assert scalars["round/pairs"] == [(0, 10.0), (1, 12.0)]
    assert scalars["round/tokens_per_s/rollout"] == [(0, 900.0), (1, 1000.0)]
    assert scalars["round/timings_s/train"] == [(0, 3.0)]
    assert scalars["remax/kl"] == [(3, pytest.approx(0.01))]
    assert "round/method" not in scalars and "round/serve_swap_s" not in scalars


def test_mlflow_file_store_read_back_and_resumed(tmp_path):
    from mlflow.tracking import MlflowClient

    rec = recipe(tmp_path, backend="mlflow", experiment="prefloop-test")
    tel = Telemetry.start(rec, tmp_path / "run")
    tel.round_done(0, {"pairs": 10, "win_rate": 0.5})
    tel.close()
    state = json.loads((tmp_path / "run" / "tracking.json").read_text())
    assert state["uri"].startswith("file:") and (tmp_path / "run" / "mlruns").is_dir()

    tel = Telemetry.start(rec, tmp_path / "run")  # the same run directory again: the same MLflow run
    tel.round_done(1, {"pairs": 12, "win_rate": 0.75})
    tel.close(failed=True)
    client = MlflowClient(tracking_uri=state["uri"])
    run = client.get_run(state["run_id"])
    assert run.info.status == "FAILED" and run.data.params["loop.rounds"] == "3"
    history = client.get_metric_history(state["run_id"], "round/win_rate")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.5), (1, 0.75)]
    assert client.get_experiment(run.info.experiment_id).name == "prefloop-test"
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_close_in_a_finally_marks_the_run_failed(tmp_path):
    from mlflow.tracking import MlflowClient

    tel = Telemetry.start(recipe(tmp_path, backend="mlflow"), tmp_path / "run")
    with pytest.raises(KeyError):
        try:
            raise KeyError("boom")
        finally:
            tel.close()
    state = json.loads((tmp_path / "run" / "tracking.json").read_text())
    assert MlflowClient(tracking_uri=state["uri"]).get_run(state["run_id"]).info.status == "FAILED"


def test_round_summary_from_a_committed_round(tmp_path):
    """The summary the loop builds once per round: pairs and throughput from the rollout, loss and training
    tokens/s from the model manifest, prompts accumulated over the rounds' eval manifests."""
    from prefloop.app.rounds.round import Round, RoundModels
    from prefloop.app.rounds.round_summary import round_summary
    from prefloop.app.storage.rundir import RunDir
    from prefloop.core.methods import method
    from prefloop.core.round_settings import EngineSettings

    root = tmp_path / "run"

    def write(r, stage, manifest):
        (root / f"round_{r}" / stage).mkdir(parents=True)
        (root / f"round_{r}" / stage / "manifest.json").write_text(json.dumps(manifest))

    write(0, "eval", {"prompts_done": 32})
    write(1, "rollout", {"counts": {"prompts_generated": 30, "pairs": 28},
                         "throughput": {"tokens_per_generator_s": 200.0}})
    write(1, "model", {"counts": {"examples": 28}, "final_metrics": {"loss": 0.5}, "tokens_per_s": 75.0})
    rec = parse_recipe({**BASE, "train": {"method": "dpo"}}, "t.yaml")
    rnd = Round(1, rec, RunDir(root), RoundModels("base", "base"), method("dpo"), EngineSettings.of(rec))
    m = round_summary(rnd, swap_s=0.02, serve_swap_s=None, timings_s={"rollout": 5.0})
    assert (m["pairs"], m["method"], m["swap_s"], m["serve_swap_s"]) == (28, "dpo", 0.02, None)
    assert m["prompts_done"] == 62 and m["train_loss"] == pytest.approx(0.5)
    assert m["tokens_per_s"] == {"rollout": 200.0, "train": 75.0} and m["timings_s"] == {"rollout": 5.0}


def test_model_manifest_means_training_tokens_per_s():
    from prefloop.app.rounds.model_stage import mean_of

    assert mean_of([{"tokens_per_s": 50.0}, {"tokens_per_s": 100.0}, {"loss": 1.0}], "tokens_per_s") == 75.0
    assert mean_of([{"loss": 1.0}], "tokens_per_s") is None
