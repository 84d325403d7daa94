"""``prefloop run`` as a Ray job on a multi-node cluster: ``ray job submit`` to a separate head, twice.

The cluster (``tests/cluster/local_cluster.py``) is a head and two worker nodes, ``gen`` and ``srv``, each started
with ``ray start`` and each with a model cache of its own, as nodes without a shared filesystem have. The demo
recipe (its first 2 rounds of online DPO on the tiny assets) is submitted with the repository as working dir and the
cluster's runtime env (``cluster/runtime_env.yaml``). ``resources.placement`` pins the generators to ``gen``, the
Serve replica to ``srv`` (``loop.serve`` on), and training and scoring to the head, where the driver runs.

The test checks four things:
- The job must SUCCEED, and its logs show the round lines.
- The demo must do what it promises. Its final round beats the base model on the held-out prompts by a fixed
  margin, graded by the recipe's eval judge. That judge is the tiny world's own preference, which did not train
  the model; the tiny PairRM that did is only reported beside it. This is the demo's learning test too.
- Round weights reached the other nodes through Ray, never by reading the driver's run directory. Every model
  load of every actor goes through ``actors/model_cache.local_model``, which records the load in the node's
  cache. Each record must name a copy in that node's own cache, and the generator and Serve records must show
  each round arriving on ``gen`` and ``srv``.
- While it runs, the head's Prometheus endpoint is scraped for the loop's ``ray_prefloop_*`` gauges.

The first job leaves its Serve app up for users. Serve is then shut down (``serve shutdown``, as after a cluster
restart), and ``prefloop demo`` is submitted on the same run directory (the demo recipe, same values): it must say
the rounds are already committed (resume = same run directory), rerun nothing, and answer from the final round,
which it serves itself on ``srv`` since the loop had nothing to do and started no Serve app.
"""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from prefloop.actors.model_cache import read_audit
from tests.cluster.local_cluster import BIN, free_ports, get, start_cluster
from tests.paths import ROOT as REPO

pytestmark = [pytest.mark.ray, pytest.mark.slow]
CLUSTER_RUNTIME_ENV = REPO / "cluster" / "runtime_env.yaml"  # the runtime env the cluster guide submits with
# Two of the demo's three rounds: round 1 runs the same code as round 2 (a later round's start model, reference
# and swap), and the third round cost ~2 minutes of CI. `make demo` runs all three.
ROUNDS = 2
# The demo's learning bar, by the gold judge (issue 9): the final round's win rate vs base at least 0.5 + WIN_MARGIN
# and above round 0's. Measured on the calibrated tiny world (2026-12-03): 0.562 after round 0, 0.641 after round 1,
# 0.711 after round 2 (see the README, "The two commands").
WIN_MARGIN = 0.1
# Where each kind of actor runs: the custom resource each node of the cluster offers (see local_cluster.py).
PLACEMENT = {"generator": {"pf_gen": 1}, "serve": {"pf_srv": 1}, "train": {"pf_head": 1}, "scorer": {"pf_head": 1}}


@pytest.fixture
def job_cluster():
    """The head (job server, driver, training) and the worker nodes ``gen`` (generators) and ``srv`` (Serve)."""
    cluster = start_cluster(head_cpus=8, workers={"gen": 2, "srv": 2})
    try:
        yield cluster
    finally:
        cluster.stop()


def submit(url: str, env: dict, run_dir: Path, assets: Path, serve_port: int,
           command: tuple[str, ...] = ("run", "recipes/demo.yaml")) -> str:
    """``ray job submit`` of ``prefloop COMMAND`` with the cluster's runtime env (its excludes leave the package
    folders, .git, .venv and run dirs out of the upload) plus the tiny assets' path; returns the submission id."""
    import yaml

    runtime_env = yaml.safe_load(CLUSTER_RUNTIME_ENV.read_text())
    runtime_env["excludes"] = runtime_env.get("excludes", []) + ["/.assets-cache/", ".pytest_cache/"]
    # HF_HUB_OFFLINE is also in the loop's own worker env (app/dataflow/runtime.py): the job's value must win, no conflict.
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), "PREFLOOP_ASSETS": str(assets),
                               "HF_HUB_OFFLINE": "1"}
    sets = ["--set", f"run_dir={run_dir}", "--set", f"resources.placement={json.dumps(PLACEMENT)}",
            "--set", "loop.serve=true", "--set", f"loop.serve_port={serve_port}", "--set", f"loop.rounds={ROUNDS}"]
    cmd = [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps(runtime_env), "--entrypoint-num-cpus", "1", "--no-wait",
           "--", "prefloop", *command, *sets]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    found = re.search(r"Job '([^']+)' submitted successfully", done.stdout + done.stderr)
    assert found, done.stdout[-2000:] + done.stderr[-2000:]
    return found.group(1)


def wait_for(client, job_id: str, timeout_s: float, metrics_port: int | None = None,
             seen: set[str] | None = None) -> tuple[str, set[str]]:
    """Poll the job to a terminal status; meanwhile collect the stages the head's metrics showed as running
    (and, into ``seen``, the names of the run's gauges)."""
    from ray.job_submission import JobStatus

    stages: set[str] = set()
    seen = set() if seen is None else seen
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status, stages
        if metrics_port is not None:
            try:
                for name, labels, value in re.findall(r"^(ray_prefloop_\w+)\{(.*)\} (\S+)$",
                                                      get(f"http://127.0.0.1:{metrics_port}/metrics"), re.M):
                    tags = dict(re.findall(r'(\w+)="([^"]*)"', labels))
                    if tags.get("run") == "demo":
                        seen.add(name)
                        if name == "ray_prefloop_stage" and float(value) == 1.0:
                            stages.add(tags["stage"])
            except OSError:
                pass
        time.sleep(2)
    client.stop_job(job_id)
    pytest.fail(f"job {job_id} not finished after {timeout_s:.0f} s:\n{client.get_job_logs(job_id)[-4000:]}")


def check_weights_came_through_ray(cluster, run_dir: Path) -> None:
    """Every actor read its models from a copy in its own node's cache; each round reached ``gen`` and ``srv``."""
    loads = {name: read_audit(cluster.cache(name)) for name in ("head", "gen", "srv")}
    for name, rows in loads.items():
        strays = [r for r in rows if not r["path"].startswith(str(cluster.cache(name)))]
        assert not strays, f"node {name}: models read from outside its own cache: {strays[:3]}"
    rounds = {f"round_{r}/model" for r in range(ROUNDS)}

    def models(node: str, who: str) -> set[str]:
        return {r["model"].split(str(run_dir) + "/", 1)[-1] for r in loads[node] if r["who"] == who}

    assert rounds <= models("gen", "generator"), models("gen", "generator")
    assert f"round_{ROUNDS - 1}/model" in models("srv", "serve"), models("srv", "serve")
    assert models("head", "trainer") and models("head", "reference"), loads["head"][:5]
    assert not models("gen", "serve") and not models("srv", "generator") and not models("head", "generator")
    print("model loads per node:", {n: len(rows) for n, rows in loads.items()})


def test_job_submit_runs_the_demo_graded_by_gold_then_resumes(job_cluster, tiny_assets, tmp_path, graded_by_gold):
    from ray.job_submission import JobStatus, JobSubmissionClient

    cluster, env = job_cluster, job_cluster.env
    url, metrics_port = cluster.url, cluster.metrics_port
    client = JobSubmissionClient(url, headers=cluster.headers)
    run_dir = tmp_path / "run"
    serve_port = free_ports(1)[0]

    started = time.monotonic()
    first = submit(url, env, run_dir, tiny_assets.root, serve_port)
    gauges: set[str] = set()
    status, stages = wait_for(client, first, 900, metrics_port, gauges)
    logs = client.get_job_logs(first)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    for r in range(ROUNDS):
        assert re.search(rf"round {r}: \d+ pairs, win rate vs base", logs), logs[-4000:]
    final = json.loads((run_dir / f"round_{ROUNDS - 1}" / "eval" / "manifest.json").read_text())
    assert final["round"] == ROUNDS - 1
    assert final["judge"] == "function" and final["judge_independent"] is True, final
    win, se = final["win_rate"], final["win_rate_stderr"]
    # Graded by the gold judge, recomputed here from the answers; a loop that does not learn (or learns the
    # proxy's blind spots) stays near 0.5 or falls below it, and does not rise over the rounds.
    graded_by_gold(run_dir, final)
    first_round = json.loads((run_dir / "round_0" / "eval" / "manifest.json").read_text())
    assert win >= 0.5 + WIN_MARGIN and win > first_round["win_rate"], (
        f"the demo did not learn by the gold judge: round 0 {first_round['win_rate']:.3f}, final {win:.3f}")
    assert final["repetition_rate"] <= final["base_repetition_rate"] + 0.05, final
    assert stages, "the head's metrics never showed a running prefloop stage"
    assert "ray_prefloop_win_rate" in gauges, f"the round's gauges never reached the head's metrics: {gauges}"
    check_weights_came_through_ray(cluster, run_dir)
    print(f"first job: {time.monotonic() - started:.0f} s; stages seen on the metrics port: {sorted(stages)}; "
          f"gauges seen: {sorted(gauges)}")

    print(f"final round: win rate {win:.3f} ± {se:.3f} over {final['n']} held-out prompts by the gold judge, "
          f"{final['scorer_win_rate']:.3f} by the training PairRM")
    eval_mtime = (run_dir / f"round_{ROUNDS - 1}" / "eval" / "manifest.json").stat().st_mtime_ns
    started = time.monotonic()
    done = subprocess.run([str(BIN / "serve"), "shutdown", "--address", url, "--yes"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    second = submit(url, env, run_dir, tiny_assets.root, serve_port, command=("demo",))
    status, _ = wait_for(client, second, 400)
    logs = client.get_job_logs(second)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert f"all {ROUNDS} rounds already committed" in logs, logs[-4000:]
    served = re.search(rf"served round {ROUNDS - 1} model on Ray Serve, asked .*\n(.*)", logs)
    assert served and served.group(1).strip(), logs[-4000:]  # the final round's answer, not an empty line
    assert (run_dir / f"round_{ROUNDS - 1}" / "eval" / "manifest.json").stat().st_mtime_ns == eval_mtime
    check_weights_came_through_ray(cluster, run_dir)  # the demo's own Serve replica loaded on srv, from its cache
    print(f"prefloop demo on the finished run: {time.monotonic() - started:.0f} s")
