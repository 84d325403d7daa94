"""GPUs held at once per phase of a round, and what a cluster scales to (``core/gpu_count.py``), by hand."""

from prefloop.core.gpu_count import PHASES, Holder, count_shortfalls, phase_needs, scalable_gpus

GEN = Holder("generators", 4, 1, PHASES, ("rollout.num_generators", "resources.generator_gpus"))
SCORE = Holder("scorers", 2, 1, PHASES, ("scorer.num_scorers", "resources.scorer_gpus"))
SERVE = Holder("serve replica", 1, 1, PHASES, ("loop.serve", "resources.generator_gpus"))
TRAIN = Holder("training workers", 8, 1, ("training",), ("train.num_workers", "train.use_gpu"))


def test_the_snorkel_recipes_training_holds_15_gpus_and_one_8_gpu_node_cannot_run_it():
    needs = {n.phase: n for n in phase_needs([GEN, SCORE, SERVE, TRAIN])}
    assert list(needs) == ["rollout", "reference pass", "training", "eval"]
    assert needs["rollout"].gpus == needs["eval"].gpus == 4 + 2 + 1
    assert needs["training"].gpus == 4 + 2 + 1 + 8 == 15
    one_node = scalable_gpus([(8, 1)])
    assert one_node == 8
    errors = count_shortfalls(list(needs.values()), one_node, "one.yaml")
    assert len(errors) == 1 and errors[0].startswith("training: 15 GPUs at once, the cluster (one.yaml) scales to 8")
    for key in ("rollout.num_generators", "scorer.num_scorers", "loop.serve", "train.num_workers"):
        assert key in errors[0]
    assert count_shortfalls(list(needs.values()), 15, "c.yaml") == []  # exactly enough is enough


def test_what_a_cluster_scales_to():
    # 8 one-GPU nodes and one 8-GPU node: 16; capped at 9 nodes: still 16; at 4 nodes: the 8-GPU one + 3 = 11
    assert scalable_gpus([(1, 8), (8, 1)]) == 16
    assert scalable_gpus([(1, 8), (8, 1)], node_cap=9) == 16
    assert scalable_gpus([(1, 8), (8, 1)], node_cap=4) == 11
    assert scalable_gpus([(4, 2), (1, 0)], node_cap=None) == 8


def test_fractional_gpus_add_up_and_phases_without_gpus_are_left_out():
    half = Holder("generators", 3, 0.5, PHASES, ("k",))
    ref = Holder("reference pass", 2, 1, ("reference pass",), ("train.num_workers",))
    none = Holder("scorers", 2, 0, PHASES, ("s",))
    needs = phase_needs([half, ref, none])
    assert [(n.phase, n.gpus) for n in needs] == [("rollout", 1.5), ("reference pass", 3.5), ("training", 1.5),
                                                   ("eval", 1.5)]
    assert all(none not in n.holders for n in needs)
    assert [e.split(":")[0] for e in count_shortfalls(needs, 3, "c")] == ["reference pass"]
    assert phase_needs([none]) == []
