"""The cluster definitions (ray-cluster.yaml and cluster/), checked offline: no Ray cluster, cloud or kubectl.

- Ray cluster launcher configs (AWS ``ray-cluster.yaml``, GCP ``cluster/gcp.yaml``): validated against the
  autoscaler JSON schema shipped inside the ray package (``ray/autoscaler/ray-schema.json``), then through Ray's
  own ``prepare_config`` + ``validate_config`` (what ``ray up`` runs before it calls a cloud API). On top: the head
  takes no work, min <= max workers, the docker image is the installed and pinned Ray, the pip pins of the setup
  commands (and of cluster/Dockerfile) are pyproject.toml's, and the node types hold what the GPU recipes ask for.
- ``cluster/runtime_env.yaml``: accepted by ``ray.runtime_env.RuntimeEnv``; packaged with Ray's own working-dir
  zip function it keeps the recipes and leaves out the package folders; its env vars do not clash with the ones
  prefloop's driver passes to ``ray.init`` (Ray refuses to merge those).
- KubeRay manifests: the CRDs' OpenAPI schemas ship with no Python package and cannot be fetched here (no network,
  no kubectl), so these are structural checks written from KubeRay's ray.io/v1 Go types (RayJobSpec,
  RayServiceSpec, RayClusterSpec): apiVersion/kind, known spec fields, required parts, the entrypoint runs
  ``prefloop run`` on a recipe that exists and loads, image and Ray versions. The RayService's serveConfigV2 is
  validated with Ray Serve's own ``ServeDeploySchema``.
- The Grafana dashboard: parses, is templated on ``run``, and every panel's query names one of prefloop's gauges
  (as Prometheus sees them, ``ray_<name>``) and aggregates only by that gauge's tags.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import shlex
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.paths import ROOT

CLUSTER_CONFIGS = ["ray-cluster.yaml", "cluster/gcp.yaml"]
KUBERAY = ROOT / "cluster" / "kuberay"
IMAGE_REPO_DIR = "/home/ray/prefloop"   # where setup_commands / cluster/Dockerfile put the repository

# The gauges of app/watch/telemetry.py and their tags (besides `run`): the names are fixed, dashboards are built on them.
METRICS = {
    "prefloop_round": (), "prefloop_prompts_done": (), "prefloop_tokens_per_s": ("stage",),
    "prefloop_pairs_kept": (), "prefloop_reward_mean": (), "prefloop_win_rate": (), "prefloop_train_loss": (),
    "prefloop_swap_s": (), "prefloop_stage": ("stage",), "prefloop_remax_reward": ("kind",),
    "prefloop_remax_kl": (), "prefloop_remax_step_s": ("part",),
}

# AWS node types leave CPU/GPU to Ray's detection from the instance type; these are AWS's published sizes of the
# instance types ray-cluster.yaml uses (GCP node types state their resources in the file).
AWS_INSTANCES = {"m6i.2xlarge": {"CPU": 8}, "m6i.4xlarge": {"CPU": 16},
                 "g5.2xlarge": {"CPU": 8, "GPU": 1}, "p4d.24xlarge": {"CPU": 96, "GPU": 8}}

# Fields of the ray.io/v1 Go types (KubeRay ray-operator/apis/ray/v1), for the structural checks.
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML", "jobId",
    "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend", "schedule",
}
RAYSERVICE_SPEC_FIELDS = {
    "serveConfigV2", "rayClusterConfig", "upgradeStrategy", "serveService", "rayClusterDeletionDelaySeconds",
    "excludeHeadPodFromServeSvc", "serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold",
}
RAYCLUSTER_SPEC_FIELDS = {
    "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec", "workerGroupSpecs",
    "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions", "upgradeStrategy",
}
WORKER_GROUP_FIELDS = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "rayStartParams", "template",
    "scaleStrategy", "numOfHosts", "suspend", "resources", "labels",
}
UPGRADE_TYPES = {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


def load_yaml(rel: str | Path) -> dict:
    return yaml.safe_load((ROOT / rel).read_text())


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned_requirements() -> dict[str, Requirement]:
    """pyproject's shared dependencies and its `gpu` extra, by package name."""
    project = pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["gpu"]]
    return {r.name.lower(): r for r in reqs}


def pinned_ray_version() -> str:
    (spec,) = pinned_requirements()["ray"].specifier
    assert spec.operator == "==", f"pyproject pins ray with {spec}"
    return spec.version


def installed_ray_version() -> str:
    import ray

    return ray.__version__


def pip_install_args(command: str) -> list[str]:
    """The package arguments of a `pip install ...` shell command (options dropped)."""
    tokens = shlex.split(command)
    assert "pip" in tokens and "install" in tokens, command
    args = tokens[tokens.index("install") + 1:]
    return [t for t in args if not t.startswith("-")]


def check_pip_pins(args: list[str], where: str) -> None:
    """Every requirement matches pyproject's; prefloop itself is installed from the repo with the gpu extra;
    every pyproject requirement that is pinned (== or an upper bound) is stated."""
    pins = pinned_requirements()
    local = [a for a in args if a.startswith("/")]
    assert local == [f"{IMAGE_REPO_DIR}[gpu]"], f"{where}: install prefloop from {IMAGE_REPO_DIR} with [gpu]: {local}"
    stated = {}
    for arg in args:
        if arg.startswith("/"):
            continue
        req = Requirement(arg)
        name = req.name.lower()
        assert name in pins, f"{where}: {arg} is not a dependency in pyproject.toml"
        assert req.specifier == pins[name].specifier, f"{where}: {arg} vs pyproject {pins[name]}"
        assert req.extras == pins[name].extras, f"{where}: {arg} extras vs pyproject {pins[name]}"
        stated[name] = req
    must = {n for n, r in pins.items() if any(s.operator in ("==", "<", "<=", "~=") for s in r.specifier)}
    assert must <= set(stated), f"{where}: pinned in pyproject but not in the install: {sorted(must - set(stated))}"


def check_image_tag(image: str, where: str) -> re.Match:
    m = re.fullmatch(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3\d+)-cu(?P<cu>\d+)", image)
    assert m, f"{where}: {image!r} is not rayproject/ray:<version>-py3XX-cuXXX"
    assert m["ray"] == installed_ray_version() == pinned_ray_version(), \
        f"{where}: image Ray {m['ray']}, installed {installed_ray_version()}, pinned {pinned_ray_version()}"
    python = f"3.{m['py'][1:]}"
    assert python in SpecifierSet(pyproject()["project"]["requires-python"]), f"{where}: Python {python}"
    return m


def node_resources(config: dict, node_type: dict) -> dict:
    """A node type's resources as the autoscaler will see them (AWS: detected from the instance type)."""
    res = dict(node_type.get("resources") or {})
    if config["provider"]["type"] == "aws":
        return {**AWS_INSTANCES[node_type["node_config"]["InstanceType"]], **res}
    return res


def is_spot(config: dict, node_type: dict) -> bool:
    nc = node_type["node_config"]
    if config["provider"]["type"] == "aws":
        return (nc.get("InstanceMarketOptions") or {}).get("MarketType") == "spot"
    return (nc.get("scheduling") or {}).get("provisioningModel") == "SPOT"


def gpu_recipes() -> list:
    from prefloop.core.config import load_recipe

    recipes = [load_recipe(p) for p in sorted((ROOT / "recipes").glob("*.yaml"))]
    return [r for r in recipes if r.train.use_gpu]


# ---- Ray cluster launcher configs ------------------------------------------------------------------------------

@pytest.fixture(params=CLUSTER_CONFIGS)
def cluster_config(request) -> tuple[str, dict]:
    return request.param, load_yaml(request.param)


def test_cluster_config_matches_rays_schema(cluster_config):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    name, config = cluster_config
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))  # merged with the provider's defaults, as `ray up` does


def test_schema_check_has_teeth():
    """A misspelt key must fail the schema check above, or that test proves nothing."""
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = load_yaml("ray-cluster.yaml")
    config["available_node_types"]["gpu_1x"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        jsonschema.validate(config, schema)


def test_head_takes_no_work(cluster_config):
    name, config = cluster_config
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, f"{name}: the head must advertise CPU: 0"
    assert not head["resources"].get("GPU"), f"{name}: the head must advertise no GPU"
    assert "min_workers" not in head and "max_workers" not in head


def test_worker_counts(cluster_config):
    name, config = cluster_config
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    for key, node in workers.items():
        assert 0 <= node["min_workers"] <= node["max_workers"] <= config["max_workers"], f"{name}: {key}"
    assert sum(n["min_workers"] for n in workers.values()) <= config["max_workers"]
    assert sum(n["max_workers"] for n in workers.values()) == config["max_workers"], \
        f"{name}: the global max_workers should be the sum of the node types' (no hidden cap)"
    assert config["idle_timeout_minutes"] > 0


def test_node_types_fit_the_gpu_recipes(cluster_config):
    """The driver node is on-demand and always there; 1-GPU spot nodes can hold every GPU recipe's generators
    and scorers; the on-demand training node has a GPU per Ray Train worker."""
    name, config = cluster_config
    types = {k: (v, node_resources(config, v)) for k, v in config["available_node_types"].items()
             if k != config["head_node_type"]}
    drivers = [k for k, (v, r) in types.items() if r.get("prefloop_driver")]
    assert len(drivers) == 1, f"{name}: one node type with the prefloop_driver resource"
    driver, _ = types[drivers[0]]
    assert driver["min_workers"] >= 1 and not is_spot(config, driver), f"{name}: the driver node must stay"
    single = [(v, r) for v, r in types.values() if r.get("GPU") == 1]
    multi = [(v, r) for v, r in types.values() if r.get("GPU", 0) > 1]
    assert single and all(is_spot(config, v) for v, r in single), f"{name}: 1-GPU generation nodes on spot"
    assert multi and not any(is_spot(config, v) for v, r in multi), f"{name}: training nodes on demand"
    for recipe in gpu_recipes():
        res = recipe.resources
        actors = [(res.generator_cpus, res.generator_gpus)] * recipe.rollout.num_generators
        if recipe.scorer.kind != "function":
            actors += [(res.scorer_cpus, res.scorer_gpus)] * recipe.scorer.num_scorers
        gpus_needed = sum(g for _, g in actors)
        gpus_there = sum(v["max_workers"] * r["GPU"] for v, r in single)
        assert gpus_needed <= gpus_there, f"{name}: {recipe.name} needs {gpus_needed} GPUs for generation/scoring"
        assert all(c <= r["CPU"] for c, g in actors if g for v, r in single), f"{name}: {recipe.name} actor CPUs"
        assert max(r["GPU"] for v, r in multi) >= recipe.train.num_workers, \
            f"{name}: {recipe.name} trains on {recipe.train.num_workers} GPUs in one node"


def test_docker_image_is_the_pinned_ray(cluster_config):
    name, config = cluster_config
    check_image_tag(config["docker"]["image"], name)
    assert not {"head_image", "worker_image"} & set(config["docker"]), f"{name}: one image for all nodes"


def test_setup_commands_pin_what_pyproject_pins(cluster_config):
    name, config = cluster_config
    installs = [c for c in config["setup_commands"] if re.search(r"\bpip install\b", c) and "prefloop" in c]
    assert len(installs) == 1, f"{name}: one pip install of prefloop in setup_commands"
    check_pip_pins(pip_install_args(installs[0]), name)
    assert config["file_mounts"] == {IMAGE_REPO_DIR: "."}, f"{name}: the repository must be mounted at {IMAGE_REPO_DIR}"
    assert "/mnt/shared:/mnt/shared" in " ".join(config["docker"]["run_options"]), f"{name}: shared storage"


def test_aws_and_gcp_install_the_same():
    aws, gcp = (load_yaml(p) for p in CLUSTER_CONFIGS)
    assert aws["setup_commands"] == gcp["setup_commands"]
    assert aws["docker"]["image"] == gcp["docker"]["image"]


def test_dockerfile_matches_the_cluster_image_and_pins():
    text = (ROOT / "cluster" / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert base == load_yaml("ray-cluster.yaml")["docker"]["image"]
    check_image_tag(base, "cluster/Dockerfile")
    run = re.search(r"^RUN (pip install .*?)(?:&&|$(?<!\\))", text, flags=re.M | re.S)
    assert run, "cluster/Dockerfile: no RUN pip install"
    check_pip_pins(pip_install_args(run.group(1).replace("\\\n", " ")), "cluster/Dockerfile")
    for folder in ("prefloop", "app", "actors", "core", "tinyworld", "recipes"):
        assert re.search(rf"^COPY .*\b{folder} \./{folder}$", text, flags=re.M), f"Dockerfile copies {folder}/"


# ---- runtime env ---------------------------------------------------------------------------------------------

def test_runtime_env_is_accepted_and_does_not_clash_with_the_driver():
    from ray.runtime_env import RuntimeEnv

    from prefloop.app.dataflow.runtime import WORKER_ENV

    env = load_yaml("cluster/runtime_env.yaml")
    RuntimeEnv(working_dir=".", **env)  # what `--working-dir . --runtime-env cluster/runtime_env.yaml` makes
    assert "working_dir" not in env, "the working dir comes from --working-dir on the command line"
    assert not set(env.get("env_vars", {})) & set(WORKER_ENV), \
        "the job's env_vars may not repeat the driver's (ray.init refuses to merge them)"


def test_runtime_env_ships_recipes_not_the_code(tmp_path):
    """Packaged the way Ray packages a working dir: recipes in, the package folders out (they would shadow the
    installed prefloop on the workers' sys.path)."""
    from ray._private.runtime_env.packaging import _zip_files

    env = load_yaml("cluster/runtime_env.yaml")
    out = tmp_path / "wd.zip"
    _zip_files(str(ROOT), env["excludes"], str(out), include_gitignore=True)
    names = set(zipfile.ZipFile(out).namelist())
    assert "recipes/snorkel-pairrm-dpo.yaml" in names and "pyproject.toml" in names
    leaked = sorted(n for n in names if n.split("/")[0] in {"prefloop", "app", "actors", "core", "tinyworld", ".git", "tests"})
    assert not leaked, f"shipped with the job: {leaked[:5]}"


# ---- KubeRay -------------------------------------------------------------------------------------------------

def kuberay_image() -> str:
    """The image both manifests use: built from cluster/Dockerfile, tagged with prefloop, Ray and Python."""
    base = check_image_tag(load_yaml("ray-cluster.yaml")["docker"]["image"], "ray-cluster.yaml")
    version = pyproject()["project"]["version"]
    return f"prefloop:{version}-ray{base['ray']}-py{base['py']}-cu{base['cu']}"


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def check_pod(template: dict, where: str) -> None:
    volumes = {v["name"] for v in template["spec"].get("volumes", [])}
    for c in containers(template):
        assert c["image"].endswith("/" + kuberay_image()), f"{where}: image {c['image']} is not .../{kuberay_image()}"
        mounts = c.get("volumeMounts", [])
        assert {m["name"] for m in mounts} <= volumes, f"{where}: a volumeMount without its volume"
        assert any(m["mountPath"] == "/mnt/shared" for m in mounts), f"{where}: /mnt/shared not mounted"
        res = c.get("resources", {})
        gpus = [res.get(k, {}).get("nvidia.com/gpu") for k in ("requests", "limits")]
        assert gpus[0] == gpus[1], f"{where}: GPU requests and limits differ"


def check_ray_cluster_spec(spec: dict, where: str) -> dict[str, dict]:
    assert set(spec) <= RAYCLUSTER_SPEC_FIELDS, f"{where}: unknown fields {set(spec) - RAYCLUSTER_SPEC_FIELDS}"
    assert spec["rayVersion"] == installed_ray_version() == pinned_ray_version(), f"{where}: rayVersion"
    head = spec["headGroupSpec"]
    assert str(head["rayStartParams"].get("num-cpus")) == "0", f"{where}: the head must take no work (num-cpus 0)"
    check_pod(head["template"], f"{where} head")
    groups = {}
    for g in spec["workerGroupSpecs"]:
        assert set(g) <= WORKER_GROUP_FIELDS, f"{where}: unknown worker group fields {set(g) - WORKER_GROUP_FIELDS}"
        assert g["groupName"] not in groups, f"{where}: duplicate group {g['groupName']}"
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{where}: {g['groupName']} replicas"
        for value in g.get("rayStartParams", {}).values():
            assert isinstance(value, str), f"{where}: rayStartParams values must be strings"
        check_pod(g["template"], f"{where} {g['groupName']}")
        groups[g["groupName"]] = g
    return groups


def group_custom_resources(group: dict) -> dict:
    raw = group.get("rayStartParams", {}).get("resources")
    return json.loads(json.loads(raw)) if raw else {}  # KubeRay wants a quoted JSON string: '"{...}"'


def group_gpus(group: dict) -> int:
    return sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
               for c in containers(group["template"]))


def test_rayjob_structure():
    doc = load_yaml(KUBERAY / "rayjob.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob" and doc["metadata"]["name"]
    spec = doc["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS, f"unknown RayJob fields {set(spec) - RAYJOB_SPEC_FIELDS}"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec.get("submissionMode", "K8sJobMode") in SUBMISSION_MODES
    assert spec["entrypointNumCpus"] >= 1, "the driver reserves its own CPU"
    groups = check_ray_cluster_spec(spec["rayClusterSpec"], "rayjob")
    wanted = json.loads(spec["entrypointResources"])
    holders = [g for g in groups.values() if all(group_custom_resources(g).get(k, 0) >= v for k, v in wanted.items())]
    assert holders and all(g["minReplicas"] >= 1 for g in holders), "no always-on group holds the driver's resources"
    gpu_groups = sorted(group_gpus(g) for g in groups.values() if group_gpus(g))
    assert gpu_groups[0] == 1 and gpu_groups[-1] >= 8, "1-GPU groups for generation, an 8-GPU group for training"


def test_rayjob_entrypoint_runs_an_existing_recipe():
    from ray.runtime_env import RuntimeEnv

    from prefloop.app.dataflow.runtime import WORKER_ENV
    from prefloop.app.front.cli import build_parser
    from prefloop.core.config import load_recipe

    spec = load_yaml(KUBERAY / "rayjob.yaml")["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["prefloop", "run"], spec["entrypoint"]
    args = build_parser().parse_args(argv[1:])  # the CLI accepts it as written
    assert args.recipe.startswith(IMAGE_REPO_DIR + "/recipes/"), "the recipe baked into the image"
    recipe_file = ROOT / Path(args.recipe).relative_to(IMAGE_REPO_DIR)
    assert recipe_file.is_file(), f"{args.recipe}: no such recipe in the repository"
    recipe = load_recipe(recipe_file, args.set)
    assert recipe.run_dir.startswith("/mnt/shared/"), "run_dir must be on the shared volume"
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**env)
    assert not set(env.get("env_vars", {})) & set(WORKER_ENV)


def serve_config() -> dict:
    return yaml.safe_load(load_yaml(KUBERAY / "rayservice.yaml")["spec"]["serveConfigV2"])


def test_rayservice_structure():
    doc = load_yaml(KUBERAY / "rayservice.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService" and doc["metadata"]["name"]
    spec = doc["spec"]
    assert set(spec) <= RAYSERVICE_SPEC_FIELDS, f"unknown RayService fields {set(spec) - RAYSERVICE_SPEC_FIELDS}"
    assert spec["upgradeStrategy"]["type"] in UPGRADE_TYPES - {"None"}, "zero-downtime cluster upgrades"
    groups = check_ray_cluster_spec(spec["rayClusterConfig"], "rayservice")
    (dep,) = serve_config()["applications"][0]["deployments"]
    gpus_at_min = sum(g["minReplicas"] * group_gpus(g) for g in groups.values())
    assert gpus_at_min >= dep["num_replicas"] * dep["ray_actor_options"]["num_gpus"], "GPUs for every replica"


def test_serve_config_matches_rays_schema_and_the_app():
    from ray.serve.schema import DeploymentSchema, ServeDeploySchema

    from prefloop.actors import serve as actors_serve

    config = serve_config()
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["route_prefix"] == "/", "PolicyServer routes /v1/... itself"
    module, _, attr = app["import_path"].partition(":")
    assert module == "prefloop.app.serving.serve" and attr
    (dep,) = app["deployments"]
    assert set(dep) <= set(DeploymentSchema.model_fields), f"unknown deployment options {set(dep) - set(DeploymentSchema.model_fields)}"
    assert hasattr(actors_serve, dep["name"]), f"no deployment class {dep['name']} in prefloop.actors.serve"
    assert dep["num_replicas"] >= 2, "with one replica a weight swap leaves a moment with none RUNNING"
    assert dep["ray_actor_options"]["num_gpus"] >= 1
    # reconfigure() reads exactly these; the served round's model is RUN_DIR/round_R/model
    args, user = app["args"], dep["user_config"]
    assert set(user) == {"model_dir", "round"}
    assert user["round"] == args["round"]
    assert user["model_dir"] == f"{args['run_dir']}/round_{args['round']}/model"
    assert args["run_dir"].startswith("/mnt/shared/")


def test_serve_import_path_is_a_builder(monkeypatch):
    """Serve's config calls import_path with the `args` dict: it must be a function of exactly one parameter
    (ray.serve._private.api.call_user_app_builder_with_args_if_necessary). The RayService gives it the API key
    from a Secret (next test); without one it refuses to serve on every interface."""
    import importlib

    from prefloop.core.serve_guard import ServeConfigError

    app = serve_config()["applications"][0]
    module, _, attr = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), attr)  # an AttributeError here: the RayService cannot deploy
    assert inspect.isfunction(builder) and len(inspect.signature(builder).parameters) == 1
    with pytest.raises(ValueError, match="need run_dir"):
        builder({"round": 1})
    with pytest.raises(ValueError, match="num_replica"):  # a misspelt arg is refused, not ignored
        builder({**app["args"], "num_replica": 2})
    monkeypatch.delenv("PREFLOOP_API_KEY", raising=False)
    with pytest.raises(ServeConfigError, match="without an API key"):
        builder(app["args"])
    monkeypatch.setenv("PREFLOOP_API_KEY", "from-the-secret")
    # The manifest's own args are all understood: the builder gets as far as looking for the round's model.
    with pytest.raises(FileNotFoundError, match=f"round {app['args']['round']} has no committed model"):
        builder(app["args"])


def test_rayservice_api_key_comes_from_a_secret_on_every_ray_container():
    spec = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayservice.yaml").read_text())["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            ref = env["PREFLOOP_API_KEY"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "prefloop-api-key", "key": "api_key"}, container["name"]


# ---- Grafana -------------------------------------------------------------------------------------------------

def dashboard() -> dict:
    return json.loads((ROOT / "cluster" / "grafana" / "prefloop-dashboard.json").read_text())


def all_panels(panels: list[dict]) -> list[dict]:
    out = []
    for p in panels:
        out.extend(all_panels(p.get("panels", [])) if p.get("type") == "row" else [p])
    return out


def test_metric_list_is_telemetrys():
    from prefloop.app.watch import telemetry

    GAUGES = telemetry.GAUGES
    assert {name: tags for name, (_, tags) in GAUGES.items()} == METRICS


def test_dashboard_is_templated_on_run():
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    query = variables["run"]["query"]
    query = query["query"] if isinstance(query, dict) else query
    m = re.fullmatch(r"label_values\((ray_\w+),\s*run\)", query)
    assert m and m[1][len("ray_"):] in METRICS, query
    assert len({p["id"] for p in all_panels(dash["panels"])}) == len(all_panels(dash["panels"])), "panel ids unique"


def test_every_panel_queries_prefloop_metrics():
    used = set()
    for panel in all_panels(dashboard()["panels"]):
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            expr = target["expr"]
            where = f"panel {panel['title']!r}: {expr}"
            names = re.findall(r"\bray_(\w+?)\{", expr)
            assert names and all(n in METRICS for n in names), f"{where}: not one of prefloop's metrics"
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), where
            assert all(sel.startswith('run=~"$run"') for sel in re.findall(r"\{([^}]*)\}", expr)), \
                f"{where}: every selector must filter on the run variable"
            for labels in re.findall(r"\bby \(([^)]*)\)", expr):
                allowed = {"run"} | {t for n in names for t in METRICS[n]}
                assert {x.strip() for x in labels.split(",")} <= allowed, f"{where}: groups by a label it lacks"
            used.update(names)
    assert used == set(METRICS), f"metrics without a panel: {sorted(set(METRICS) - used)}"


def test_guide_names_existing_files():
    text = (ROOT / "cluster" / "README.md").read_text()
    for rel in set(re.findall(r"\b((?:recipes|cluster)/[\w./-]+\.(?:yaml|json))\b", text)):
        assert (ROOT / rel).is_file(), f"cluster/README.md names {rel}, which does not exist"
    assert "--runtime-env cluster/runtime_env.yaml" in text and "--entrypoint-num-cpus 1" in text


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
