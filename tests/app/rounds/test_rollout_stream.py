"""app/rounds/rollout_stream.py's pure parts, without Ray: the rollout's tables written chunk by chunk (fixed schemas,
one row group per chunk, the same rows read back), and an empty table that still has its columns (what train,
evaluate and report read). The two Ray Data passes (``index_prompts``, ``stream_rollout``) run in test_rollout.py."""

import json

import numpy as np
import pyarrow.parquet as pq

from prefloop.app.rounds.rollout_stream import Totals, chunked, output_schemas, select
from prefloop.app.storage.tables import ParquetAppender
from prefloop.core.config import parse_recipe


def recipe(tmp_path):
    return parse_recipe({"name": "t", "run_dir": str(tmp_path / "run"), "policy": {"model": "m"},
                         "data": {"train": "p.jsonl"}, "rollout": {"num_samples": 3},
                         "scorer": {"kind": "function", "function": "a:b"}}, "t")


def scored(i, scores, texts=("a", "bb", "ccc")):
    """A row as the scorer stage hands it back (numpy arrays where Ray Data gives them)."""
    return {"prompt_id": f"q{i}", "prompt": f"prompt {i}",
            "messages": json.dumps([{"role": "user", "content": f"prompt {i}"}]),
            "candidates": np.array(texts, dtype=object), "scores": np.array(scores),
            "num_tokens": np.array([1, 2, 3]), "finish_reasons": np.array(["stop", "length", "stop"], dtype=object),
            "sum_logprob": np.array([-1.0, -2.0, -3.0]),
            "token_logprobs": np.array([np.array([-1.0]), np.array([-1.0, -1.0]), np.array([-1.0] * 3)], dtype=object),
            "sampled_from": "/m/policy", "generate_s": 0.5, "score_s": 0.25}


def test_chunks_append_to_the_same_files(tmp_path):
    r = recipe(tmp_path)
    rows = [scored(i, [0.1 * i, 0.5, 0.2]) for i in range(5)] + [scored(5, [1.0, 1.0, 1.0])]  # the last ties
    writers = {name: ParquetAppender(tmp_path / name, schema) for name, schema in output_schemas().items()}
    totals, written = Totals(), {name: [] for name in writers}
    for chunk in chunked(rows, 4):
        tables = select(r, chunk)
        for name, table in zip(writers, tables):
            writers[name].write(table)
            written[name] += table
        totals.add(chunk, *tables)
    for w in writers.values():
        w.close()
    for name in writers:
        back = pq.read_table(tmp_path / name)
        assert back.to_pylist() == written[name]
        assert pq.ParquetFile(tmp_path / name).num_row_groups == 2
    cands = pq.read_table(tmp_path / "candidates.parquet").to_pylist()
    assert [c["prompt_id"] for c in cands] == [f"q{i}" for i in range(6)]
    assert cands[0]["messages"] == [{"role": "user", "content": "prompt 0"}]
    assert cands[0]["token_logprobs"] == [[-1.0], [-1.0, -1.0], [-1.0, -1.0, -1.0]]
    assert cands[5]["pair_status"] == "all candidates tie" and cands[5]["best"] is None
    pairs = pq.read_table(tmp_path / "pairs.parquet").to_pylist()
    # q2 ties a and ccc at 0.2 for the worst: the longer one goes (tie_break shortest)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("bb", "a")] * 2 + [("bb", "ccc")] * 3
    assert totals.prompts == 6 and totals.candidates == 18 and totals.pairs == 5 and totals.kto == 10
    assert totals.tokens == 36 and totals.unpaired == {"all candidates tie": 1}
    assert totals.generator_busy_s == 3.0 and totals.scorer_busy_s == 1.5


def test_an_empty_table_keeps_its_columns(tmp_path):
    schemas = output_schemas()
    ParquetAppender(tmp_path / "pairs.parquet", schemas["pairs.parquet"]).close()
    back = pq.read_table(tmp_path / "pairs.parquet")
    assert back.num_rows == 0 and back.column_names[:5] == ["prompt_id", "prompt", "messages", "chosen", "rejected"]
