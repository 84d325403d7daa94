"""prefloop's gauges on a real Ray node: set through ``Telemetry`` on the driver, read back from the node's
Prometheus endpoint (``metrics_export_port``) as ``ray_prefloop_...{run="..."}``."""

import re
import time
import urllib.request

import pytest

from prefloop.app.watch.telemetry import GAUGES, Telemetry
from prefloop.core.config import parse_recipe

pytestmark = pytest.mark.ray
RECIPE = {"name": "metrics-test", "run_dir": "unused", "policy": {"model": "m"}, "data": {"train": "p"},
          "scorer": {"kind": "pairrm", "model": "r"}}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def sample(text: str, name: str, **tags: str) -> float | None:
    """The value of the series ``name`` whose labels include ``tags`` (None if absent)."""
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in tags.items()):
            return float(m.group(2))
    return None


def test_gauges_reach_the_nodes_metrics_endpoint(ray_cluster, tmp_path):
    port = ray_cluster._private.worker.global_worker.node.metrics_export_port
    tel = Telemetry.start(parse_recipe({**RECIPE, "run_dir": str(tmp_path)}, "t.yaml"), tmp_path)
    try:
        tel.activity("rollout")
        tel.activity("train")
        tel.round_done(2, {"pairs": 28, "mean_score": -0.5, "win_rate": 0.625, "train_loss": 0.69, "swap_s": 0.02,
                           "prompts_done": 96, "tokens_per_s": {"rollout": 1234.5, "train": 321.0}})
        tel.remax_step(7, {"reward_sample": 0.4, "reward_greedy": 0.3, "kl": 0.05, "generate_s": 1.5,
                                 "score_s": 0.5, "train_s": 2.0, "sync_s": 0.1})
        run = {"run": "metrics-test"}
        expected = [("ray_prefloop_round", {}, 2), ("ray_prefloop_pairs_kept", {}, 28),
                    ("ray_prefloop_reward_mean", {}, -0.5), ("ray_prefloop_win_rate", {}, 0.625),
                    ("ray_prefloop_train_loss", {}, 0.69), ("ray_prefloop_swap_s", {}, 0.02),
                    ("ray_prefloop_prompts_done", {}, 96),
                    ("ray_prefloop_tokens_per_s", {"stage": "rollout"}, 1234.5),
                    ("ray_prefloop_tokens_per_s", {"stage": "train"}, 321.0),
                    ("ray_prefloop_stage", {"stage": "train"}, 1), ("ray_prefloop_stage", {"stage": "rollout"}, 0),
                    ("ray_prefloop_remax_reward", {"kind": "sample"}, 0.4),
                    ("ray_prefloop_remax_reward", {"kind": "greedy"}, 0.3), ("ray_prefloop_remax_kl", {}, 0.05),
                    ("ray_prefloop_remax_step_s", {"part": "generate"}, 1.5),
                    ("ray_prefloop_remax_step_s", {"part": "sync"}, 0.1)]
        assert {name for name, _, _ in expected} == {f"ray_{n}" for n in GAUGES}
        deadline, missing = time.monotonic() + 90, expected
        while missing and time.monotonic() < deadline:  # the node exports what workers report every few s
            text = scrape(port)
            missing = [(n, t, v) for n, t, v in expected if sample(text, n, **run, **t) != pytest.approx(v)]
            time.sleep(1)
        assert not missing, f"not on http://127.0.0.1:{port}/metrics after 90 s: {missing}"
    finally:
        tel.close()
