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

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)  # --block: the node stops its own processes
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of this node's process group is left
        except ProcessLookupError:
            pass


class Cluster:
    """A head and ``workers`` ({name: logical CPUs}) on this machine; ``env`` is what its clients need."""

    def __init__(self, head_cpus: int, workers: dict[str, int]):
        token = secrets.token_hex(32)
        self.headers = {"Authorization": f"Bearer {token}"}
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0",
                   RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        self.env = env
        self.temp_dir = tempfile.mkdtemp(prefix="pfc-", dir="/tmp")  # short: socket paths must stay < 108 chars
        self.head = Node(env, self.temp_dir, "head", head_cpus)
        self.url, self.metrics_port = self.head.url, self.head.metrics_port
        self.nodes = [self.head] + [Node(env, self.temp_dir, name, cpus, self.head.gcs_address)
                                    for name, cpus in workers.items()]

    def cache(self, name: str) -> Path:
        return next(n.cache for n in self.nodes if n.name == name)

    def wait_ready(self, timeout_s: float) -> str | None:
        """None once the job server answers and every node is alive; else why not."""
        from ray.job_submission import JobSubmissionClient

        deadline, server_up = time.monotonic() + timeout_s, False
        while time.monotonic() < deadline:
            problems = [p for p in (n.exited() for n in self.nodes) if p]
            if problems:
                return "\n".join(problems)
            try:
                if not server_up:
                    JobSubmissionClient(self.url, headers=self.headers)  # checks the job server's version
                    server_up = True
                nodes = json.loads(get(f"{self.url}/nodes?view=summary", headers=self.headers))
                alive = [n for n in nodes["data"]["summary"] if n["raylet"]["state"] == "ALIVE"]
                if len(alive) == len(self.nodes):
                    return None
            except Exception:
                pass
            time.sleep(2)
        return f"the cluster was not up with {len(self.nodes)} nodes after {timeout_s:.0f} s"

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_cluster(head_cpus: int, workers: dict[str, int], timeout_s: float = 240) -> Cluster:
    """A ready cluster. On a loaded 2-core machine a raylet can miss Ray's 30 s start-up deadline: one retry on
    fresh ports; the error names both tries' problems."""
    problems = []
    for _ in range(2):
        cluster = Cluster(head_cpus, workers)
        try:
            problem = cluster.wait_ready(timeout_s)
        except BaseException:  # e.g. Ctrl-C while waiting: never leave a cluster behind
            cluster.stop()
            raise
        if problem is None:
            return cluster
        problems.append(problem)
        cluster.stop()
    raise RuntimeError("could not start the local multi-node cluster:\n" + "\n---\n".join(problems))
