"""``prefloop run`` as a Ray job: ``ray job submit`` to a separate head, twice.

A head of its own is started with ``ray start --head --block`` on free ports and in a short temp dir of its
own (so its address file never lands in /tmp/ray, where ``ray.init()`` of other tests and CI would find it).
The demo recipe, unchanged (3 rounds of online DPO on the tiny assets), is submitted with the repository as
working dir and the cluster's runtime env (``cluster/runtime_env.yaml``); the job must SUCCEED, its logs show the
round lines, and the demo must do what it promises: its final round beats the base model on the held-out
prompts by a fixed margin, graded by the recipe's eval judge (the tiny world's own preference, which did not
train the model; the tiny PairRM that did is only reported beside it). This is the demo's learning test too. While it runs, the head's
Prometheus endpoint is scraped for the loop's ``ray_prefloop_*`` gauges. The same command submitted again must
succeed at once and say the rounds are already committed (resume = same run directory).

Teardown sends SIGTERM to that ``ray start --block`` process, which stops the processes of that head only
(``ray stop`` would stop every Ray on the machine, the session's cluster included), then kills what is left of
its own process group.
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLUSTER_RUNTIME_ENV = REPO / "cluster" / "runtime_env.yaml"  # the runtime env the cluster guide submits with
ROUNDS = 3  # recipes/demo.yaml's
# The demo's learning bar, by the gold judge (issue 9): the final round's win rate vs base at least 0.5 + WIN_MARGIN
# and above round 0's. Measured on the calibrated tiny world (2026-12-03): see the README, "The two commands".
WIN_MARGIN = 0.1


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


class Head:
    """One ``ray start --head --block`` process on free ports, in a temp dir of its own."""

    def __init__(self, env: dict, token: str):
        self.headers = {"Authorization": f"Bearer {token}"}
        self.temp_dir = tempfile.mkdtemp(prefix="pfjob-", dir="/tmp")  # short: socket paths must stay < 108 chars
        gcs, dash, agent, agent_grpc, self.metrics_port, rt_env, client = free_ports(7)
        self.url = f"http://127.0.0.1:{dash}"
        cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=8",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
               f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--metrics-export-port={self.metrics_port}", f"--runtime-env-agent-port={rt_env}",
               f"--ray-client-server-port={client}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats"]
        self.log_path = Path(self.temp_dir) / "ray-start.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float) -> str | None:
        """None once the job server answers; else why not."""
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log_path.read_text()
                errors = [line for line in text.splitlines() if re.search(r"error|exception|timed out", line, re.I)]
                return f"ray start exited {self.proc.returncode}:\n" + "\n".join(errors[-20:] or [text[-2000:]])
            try:
                JobSubmissionClient(self.url, headers=self.headers)  # checks the job server's version
                return None
            except Exception:
                time.sleep(2)
        return f"the job head's dashboard did not answer in {timeout_s:.0f} s"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)  # --block: the head stops its own processes
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of this head's process group is left
        except ProcessLookupError:
            pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def job_head():
    """A separate Ray head with a dashboard (the job server); yields (the head, the env of its clients).
    It uses token auth (Ray's default) with a token of its own, given to the head and every client through the
    environment, so nothing depends on ~/.ray/auth_token. On a loaded 2-core machine a raylet can miss Ray's
    30 s start-up deadline: one retry on fresh ports."""
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    problems = []
    for _ in range(2):
        head = Head(env, token)
        try:
            problem = head.wait_ready(240)
        except BaseException:  # e.g. Ctrl-C while waiting: never leave a head behind
            head.stop()
            raise
        if problem is None:
            break
        problems.append(problem)
        head.stop()
    else:
        pytest.fail("could not start the job head:\n" + "\n---\n".join(problems))
    try:
        yield head, env
    finally:
        head.stop()


def submit(url: str, env: dict, run_dir: Path, assets: Path) -> str:
    """``ray job submit`` with the cluster's runtime env (its excludes leave the package folders, .git, .venv and
    run dirs out of the upload) plus the tiny assets' path; returns the submission id."""
    import yaml

    runtime_env = yaml.safe_load(CLUSTER_RUNTIME_ENV.read_text())
    runtime_env["excludes"] = runtime_env.get("excludes", []) + ["/.assets-cache/", ".pytest_cache/"]
    # HF_HUB_OFFLINE is also in the loop's own worker env (app/runtime.py): the job's value must win, no conflict.
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), "PREFLOOP_ASSETS": str(assets),
                               "HF_HUB_OFFLINE": "1"}
    sets = ["--set", f"run_dir={run_dir}"]
    cmd = [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps(runtime_env), "--entrypoint-num-cpus", "1", "--no-wait",
           "--", "prefloop", "run", "recipes/demo.yaml", *sets]
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


def test_job_submit_runs_the_demo_graded_by_gold_then_resumes(job_head, tiny_assets, tmp_path, graded_by_gold):
    from ray.job_submission import JobStatus, JobSubmissionClient

    head, env = job_head
    url, metrics_port = head.url, head.metrics_port
    client = JobSubmissionClient(url, headers=head.headers)
    run_dir = tmp_path / "run"

    started = time.monotonic()
    first = submit(url, env, run_dir, tiny_assets.root)
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
    print(f"first job: {time.monotonic() - started:.0f} s; stages seen on the metrics port: {sorted(stages)}; "
          f"gauges seen: {sorted(gauges)}")

    print(f"final round: win rate {win:.3f} ± {se:.3f} over {final['n']} held-out prompts by the gold judge, "
          f"{final['judge_win_rate']:.3f} by the training PairRM")
    eval_mtime = (run_dir / f"round_{ROUNDS - 1}" / "eval" / "manifest.json").stat().st_mtime_ns
    started = time.monotonic()
    second = submit(url, env, run_dir, tiny_assets.root)
    status, _ = wait_for(client, second, 300)
    logs = client.get_job_logs(second)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert f"all {ROUNDS} rounds already committed" in logs, logs[-4000:]
    assert (run_dir / f"round_{ROUNDS - 1}" / "eval" / "manifest.json").stat().st_mtime_ns == eval_mtime
    print(f"resubmitted job: {time.monotonic() - started:.0f} s")
