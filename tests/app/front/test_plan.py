"""`prefloop plan`: parameter counts and memory from config.json alone, against hand-computed figures."""

from __future__ import annotations

import pytest

from prefloop.core import plan as P
from prefloop.core.cluster_gpus import gpu_nodes
from tests.paths import ROOT

CONFIGS = ROOT / "recipes" / "model_configs"


def shape(name):
    from prefloop.app.front.plan import load_shape

    return load_shape(f"/mnt/shared/models/{name}", "policy.model")


def test_mistral_7b_params_and_bf16_weights():
    s = shape("Mistral-7B-Instruct-v0.2")
    # by hand: embed + lm_head 2 x 32000 x 4096; per layer q,o 4096^2, k,v 4096 x 1024, MLP 3 x 4096 x 14336,
    # 2 RMSNorms; 32 layers; final norm
    layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert s.params == 2 * 32000 * 4096 + 32 * layer + 4096 == 7_241_732_096
    assert round(s.params * 2 / 1e9, 1) == 14.5
    # KV cache: 2 (K, V) x 32 layers x 8 KV heads x 128 x 2 bytes = 128 KiB per token
    assert s.kv_bytes_per_token(2) == 131072


def test_ultrarm_13b_is_llama_13b_body_plus_one_row():
    llama, rm = shape("llama-13b"), shape("UltraRM-13b")
    assert llama.params == 13_015_864_320
    assert rm.kind == "reward" and rm.params == llama.params - 32000 * 5120 + 5120


def test_pairrm_is_deberta_v3_large_plus_its_head():
    rm = shape("llm-blender-PairRM")
    backbone = 434_012_160  # DebertaV2Model(deberta-v3-large), as transformers counts it
    assert rm.kind == "pairrm" and rm.params == backbone + 3 * 1024 + 2 * 1024 * 1024 + 1024 + 1024 + 1


def test_lora_r16_all_linear_mistral():
    s = shape("Mistral-7B-Instruct-v0.2")
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    per_layer = 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 3)
    assert s.lora_params(16, targets) == 32 * per_layer == 41_943_040


def test_generator_and_fsdp_trainer_figures():
    s = shape("Mistral-7B-Instruct-v0.2")
    gen = P.generator_need(s, 2, 2048, None)
    assert gen.parts["weights"] == s.params * 2 and gen.parts["kv_cache"] == 131072 * 2048
    t = P.TrainShape("fsdp", 8, micro_batch=4, seq_len=2048)
    need = P.train_need(s, 2, t)
    assert need.parts["master+grads+adam"] == s.params * 16 / 8           # 14.5 GB
    ddp = P.train_need(s, 2, P.TrainShape("ddp", 8, 4, 2048))
    assert ddp.parts["master+grads+adam"] == s.params * 16                 # 115.9 GB: no 7B full DDP on one GPU
    lora = P.train_need(s, 2, P.TrainShape("ddp", 1, 4, 768, 16, ("q_proj",)))
    assert lora.parts["weights"] == s.params * 2 and lora.parts["adapters+grads+adam"] == 32 * 16 * 8192 * 16


def test_cluster_files_gpu_tables():
    nodes = {n.name: n for n in gpu_nodes(ROOT / "ray-cluster.yaml")}
    assert (nodes["gpu_1x"].gpu_model, nodes["gpu_1x"].gpus) == ("A10G", 1)
    assert (nodes["gpu_8x"].gpu_model, nodes["gpu_8x"].gpus) == ("A100-SXM4-40GB", 8)
    for f in ("cluster/gcp.yaml", "cluster/kuberay/rayjob.yaml", "cluster/kuberay/rayservice.yaml"):
        assert gpu_nodes(ROOT / f)


def test_unknown_instance_is_an_error_naming_it(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("available_node_types:\n  big:\n    resources: {GPU: 1}\n    node_config: {InstanceType: x9.huge}\n")
    with pytest.raises(ValueError, match="'big'.*'x9.huge'"):
        gpu_nodes(f)


def test_run_refuses_a_plan_that_cannot_fit(tmp_path):
    from prefloop.app.front.plan import check_plan
    from prefloop.core.config import RecipeError, load_recipe

    recipe = load_recipe(ROOT / "recipes" / "remax-ultrarm.yaml")
    check_plan(recipe, str(ROOT / "ray-cluster.yaml"))  # UltraRM (28 GB) fits the A100 node: a warning only
    with pytest.raises(RecipeError, match=r"scorer \(gpu-1x, g5.2xlarge, A10G\): needs 28.1 GB, has 24.1 GB: "
                       r"short by 4.0 GB"):
        check_plan(recipe, str(ROOT / "cluster" / "kuberay" / "rayservice.yaml"))  # only A10G nodes


def test_cpu_recipes_are_not_checked():
    from prefloop.app.front.plan import check_plan, uses_gpu
    from prefloop.core.config import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "snorkel-pairrm-dpo.yaml", placeholders={"assets": "a", "data": "d"},
                         tiny=True)
    assert not uses_gpu(recipe)
    check_plan(recipe, str(ROOT / "cluster" / "kuberay" / "rayservice.yaml"))


def test_plan_cli_prints_every_actor(capsys):
    from prefloop.app.front.cli import main

    assert main(["plan", str(ROOT / "recipes" / "snorkel-pairrm-dpo.yaml"),
                 "--cluster", str(ROOT / "ray-cluster.yaml")]) == 0
    out = capsys.readouterr().out
    for actor in ("generator", "scorer", "trainer", "reference pass", "serve replica", "serve re-ranker"):
        assert f"\n{actor} " in out
    assert "weights 14.5" in out


def test_prefloop_run_refuses_before_starting_anything(capsys, monkeypatch):
    from prefloop.app.front.cli import main
    from prefloop.app.rounds import loop

    monkeypatch.setattr(loop, "run_loop", lambda recipe: pytest.fail("the loop must not start"))
    rc = main(["run", str(ROOT / "recipes" / "remax-ultrarm.yaml"),
               "--cluster", str(ROOT / "cluster" / "kuberay" / "rayservice.yaml")])
    err = capsys.readouterr().err
    # exit 1: the preflight ran and found problems (the plan's shortfall among them)
    assert rc == 1 and "trainer (gpu-1x, g5.2xlarge, A10G)" in err and "short by" in err


ONE_8_GPU_NODE = """max_workers: 2
available_node_types:
  head: {resources: {CPU: 0}, node_config: {InstanceType: m6i.2xlarge}}
  driver: {min_workers: 1, max_workers: 1, resources: {prefloop_driver: 1}, node_config: {InstanceType: m6i.4xlarge}}
  gpu_8x: {min_workers: 0, max_workers: 1, resources: {}, node_config: {InstanceType: p4de.24xlarge}}
head_node_type: head
"""


def test_plan_counts_the_gpus_of_each_phase_against_what_the_cluster_scales_to(tmp_path, capsys):
    """The Snorkel recipe keeps 4 generators, 2 scorers and a Serve replica alive beside 8 training workers:
    15 GPUs, which one 8-GPU node cannot hold (80 GB A100s: every actor's memory fits, the count does not);
    the 16 GPUs of ray-cluster.yaml (8 x 1 + 1 x 8) can."""
    from prefloop.app.front.cli import main
    from prefloop.app.front.plan import count_check, gpu_holders
    from prefloop.app.front.preflight import preflight
    from prefloop.core.config import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "snorkel-pairrm-dpo.yaml")
    got = {(h.actor, h.count, h.gpus) for h in gpu_holders(recipe)}
    assert got == {("generators", 4, 1), ("scorers", 2, 1), ("serve replica", 1, 1), ("training workers", 8, 1),
                   ("reference pass", 8, 1)}
    small = tmp_path / "one-node.yaml"
    small.write_text(ONE_8_GPU_NODE)
    needs, capacity, errors = count_check(recipe, str(small))
    assert capacity == 8 and [(n.phase, n.gpus) for n in needs] == [("rollout", 7), ("reference pass", 15),
                                                                     ("training", 15), ("eval", 7)]
    assert [e.split(":")[0] for e in errors] == ["reference pass", "training"]
    assert "train.num_workers" in errors[1] and "rollout.num_generators" in errors[1] and "loop.serve" in errors[1]
    assert count_check(recipe, str(ROOT / "ray-cluster.yaml"))[1:] == (16, [])

    assert main(["plan", str(ROOT / "recipes" / "snorkel-pairrm-dpo.yaml"), "--cluster", str(small)]) == 1
    out = capsys.readouterr().out
    assert "training           15  DOES NOT FIT" in out and "training: 15 GPUs at once" in out
    problems = preflight(recipe, "run", cluster=str(small))  # `prefloop run` refuses it before anything starts
    assert any(p.startswith(f"{recipe.name}: the plan does not fit") and "training: 15 GPUs" in p for p in problems)


def test_a_later_round_keeps_its_scorers_through_training_and_a_one_round_offline_run_does_not():
    from prefloop.app.front.plan import gpu_holders
    from prefloop.core.config import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "snorkel-pairrm-dpo.yaml")
    offline = recipe.model_copy(update={"train": recipe.train.model_copy(update={"data": "/d/pairs.parquet"}),
                                        "loop": recipe.loop.model_copy(update={"rounds": 1})})
    scorers = next(h for h in gpu_holders(offline) if h.actor == "scorers")
    assert scorers.phases == ("eval",)  # first used by the eval, after the training
    again = offline.model_copy(update={"loop": offline.loop.model_copy(update={"rounds": 2})})
    assert "training" in next(h for h in gpu_holders(again) if h.actor == "scorers").phases


def test_a_one_round_command_counts_only_what_it_starts(tmp_path):
    """`prefloop rollout --round R` starts its generators and scorers (6 GPUs: no Serve replica), `train --round
    R` the training workers (8): each fits the one 8-GPU node that `run` does not."""
    from prefloop.app.front.plan import check_plan, count_check
    from prefloop.core.config import RecipeError, load_recipe

    recipe = load_recipe(ROOT / "recipes" / "snorkel-pairrm-dpo.yaml")
    small = tmp_path / "one-node.yaml"
    small.write_text(ONE_8_GPU_NODE)
    needs, _, errors = count_check(recipe, str(small), "rollout")
    assert [(n.phase, n.gpus) for n in needs] == [("rollout", 6)] and errors == []
    needs, _, errors = count_check(recipe, str(small), "train")
    assert [(n.phase, n.gpus) for n in needs] == [("reference pass", 8), ("training", 8)] and errors == []
    check_plan(recipe, str(small), "train")
    with pytest.raises(RecipeError, match="training: 15 GPUs at once"):
        check_plan(recipe, str(small))
