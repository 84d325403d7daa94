"""A real multi-node Ray cluster on this machine, for the tests that need more than the session's local Ray.

Every node is a ``ray start --block`` process of its own: one head (with the dashboard: the job server) and any
number of worker nodes joined to it. Each node:
- offers a custom resource of its own (``pf_head``, ``pf_gen``, ...), so a recipe's ``resources.placement``
  can pin actors to it;
- has its own model cache (``PREFLOOP_MODEL_CACHE`` in the node's environment, which its workers inherit),
  as nodes without a shared filesystem have;
- listens on free ports, and the head keeps its files in a short temp dir of its own, so its address file
  never lands in /tmp/ray, where ``ray.init()`` of other tests and CI would find it.

Stopping sends SIGTERM to each ``ray start --block`` process, which stops that node's processes only (``ray stop``
would stop every Ray on the machine, the session's cluster included), then kills what is left of its process
group. Token auth (Ray's default) uses a token of the cluster's own, given to every node and client through the
environment, so nothing depends on ~/.ray/auth_token.
"""

from __future__ import annotations

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

BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def get(url: str, timeout: float = 10, headers: dict | None = None) -> str:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as resp:
        return resp.read().decode()


class Node:
    """One ``ray start --block`` process: the head when ``gcs_address`` is None, else a worker node joining it."""

    def __init__(self, env: dict, temp_dir: str, name: str, num_cpus: int, gcs_address: str | None = None):
        self.name, self.cache = name, Path(temp_dir) / f"cache-{name}"
        agent, agent_grpc, self.metrics_port, rt_env = free_ports(4)
        common = [f"--num-cpus={num_cpus}", f"--resources={json.dumps({f'pf_{name}': 100})}",
                  f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                  f"--metrics-export-port={self.metrics_port}", f"--runtime-env-agent-port={rt_env}",
                  "--object-store-memory=1000000000", "--disable-usage-stats"]
        if gcs_address is None:
            gcs, dash, client = free_ports(3)
            self.gcs_address, self.url = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
            cmd = ["--head", f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                   f"--dashboard-port={dash}", f"--ray-client-server-port={client}", f"--temp-dir={temp_dir}"]
        else:
            self.gcs_address, self.url = gcs_address, None
            cmd = [f"--address={gcs_address}"]
        self.log_path = Path(temp_dir) / f"ray-start-{name}.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", *cmd, *common],
                                         env=dict(env, PREFLOOP_MODEL_CACHE=str(self.cache)), stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def exited(self) -> str | None:
        """None while running; else why it stopped (the errors of its log)."""
        if self.proc.poll() is None:
            return None
        text = self.log_path.read_text()
        errors = [line for line in text.splitlines() if re.search(r"error|exception|timed out", line, re.I)]
        return f"node {self.name}: ray start exited {self.proc.returncode}:\n" + "\n".join(errors[-20:] or [text[-2000:]])

    def stop(self, wait_s: float = 60) -> None:
        self.terminate()
        self.finish(time.monotonic() + wait_s)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # --block: the node stops its own processes

    def finish(self, deadline: float) -> None:
        """Waits for the node to stop until ``deadline``, then kills what is left of its process group."""
        try:
            self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of this node's process group is left
        except ProcessLookupError:
            pass


class Cluster:
    """A head and ``workers`` ({name: logical CPUs}) on this machine; ``env`` is what its clients need.

    Nodes start one at a time, each once the previous one is up: a raylet that starts beside others on a loaded
    2-core machine can miss Ray's fixed 30 s deadline to register. A node that misses it is started again once."""

    def __init__(self, head_cpus: int, workers: dict[str, int]):
        token = secrets.token_hex(32)
        self.headers = {"Authorization": f"Bearer {token}"}
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0",
                   RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        self.env, self.head_cpus, self.workers = env, head_cpus, workers
        self.temp_dir = tempfile.mkdtemp(prefix="pfc-", dir="/tmp")  # short: socket paths must stay < 108 chars
        self.nodes: list[Node] = []

    @property
    def head(self) -> Node:
        return self.nodes[0]

    def cache(self, name: str) -> Path:
        return next(n.cache for n in self.nodes if n.name == name)

    def start(self, timeout_s: float) -> None:
        """Starts the head, then each worker node; raises naming every failed try."""
        self._start_node("head", self.head_cpus, None, timeout_s)
        self.url, self.metrics_port = self.head.url, self.head.metrics_port
        for name, cpus in self.workers.items():
            self._start_node(name, cpus, self.head.gcs_address, timeout_s)

    def _start_node(self, name: str, cpus: int, gcs_address: str | None, timeout_s: float) -> None:
        problems = []
        for _ in range(2):
            self.nodes.append(Node(self.env, self.temp_dir, name, cpus, gcs_address))
            problem = self._wait_up(timeout_s)
            if problem is None:
                return
            problems.append(problem)
            self.nodes.pop().stop()
        raise RuntimeError("could not start the local multi-node cluster:\n" + "\n---\n".join(problems))

    def _wait_up(self, timeout_s: float) -> str | None:
        """None once the job server answers and all nodes started so far are alive; else why not."""
        from ray.job_submission import JobSubmissionClient

        deadline, server_up = time.monotonic() + timeout_s, False
        while time.monotonic() < deadline:
            problems = [p for p in (n.exited() for n in self.nodes) if p]
            if problems:
                return "\n".join(problems)
            try:
                if not server_up:
                    JobSubmissionClient(self.head.url, headers=self.headers)  # checks the job server's version
                    server_up = True
                nodes = json.loads(get(f"{self.head.url}/nodes?view=summary", headers=self.headers))
                alive = [n for n in nodes["data"]["summary"] if n["raylet"]["state"] == "ALIVE"]
                if len(alive) == len(self.nodes):
                    return None
            except Exception:
                pass
            time.sleep(2)
        return f"node {self.nodes[-1].name} was not up after {timeout_s:.0f} s"

    def stop(self) -> None:
        """All nodes at once (one by one, each waits for its raylet's grace period). A node still up after
        10 s is killed with its process group: nothing of a test cluster needs a graceful end, and the grace
        period cost ~30 s of every CI run."""
        for node in self.nodes:
            node.terminate()
        deadline = time.monotonic() + 10
        for node in self.nodes:
            node.finish(deadline)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_cluster(head_cpus: int, workers: dict[str, int], timeout_s: float = 240) -> Cluster:
    """A ready cluster, or an error naming each node's failed start (nothing left running)."""
    cluster = Cluster(head_cpus, workers)
    try:
        cluster.start(timeout_s)
    except BaseException:  # a failed start or Ctrl-C while waiting: never leave a cluster behind
        cluster.stop()
        raise
    return cluster
