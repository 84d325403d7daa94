"""Serve on a real model: how soon a streamed answer's first token arrives, and how long a weight swap pauses it.

    python bench/serve_stream.py [--model {smollm2}|DIR] [--requests 5] [--max-tokens 128] [--swaps 3]

Starts a local Ray and one Serve replica on the model (SmolLM2-135M-Instruct by default, imported on first use),
then over HTTP, alternating: a streamed request (time to the first content event and to ``[DONE]``) and the same
request not streamed (time to the whole answer). Medians over ``--requests`` of each. Goal (issue 25): the first
token within 0.3x of the whole answer's time for a 128-token answer. Then ``--swaps`` in-place swaps to a copy of
the model with noise on every weight and back (``publish``): the longest time the replica held requests back
(``swap_s``; goal 0.5 s for SmolLM2, a tied-embedding model). The load average before and after says whether the
machine was busy; a busy run's figures are recorded as such.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
# bench/ off the path (a bench module must not shadow a standard one), the checkout on it: bench.results
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

from bench.results import record  # noqa: E402

PROMPT = "Write a long story about a dragon who learns to bake bread. Describe every step in detail."


def post(url: str, body: dict, stream: bool) -> dict:
    """One request; the seconds to the first content event (streamed) and to the end, the pieces and finish."""
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps({**body, "stream": stream}).encode(),
                                 headers={"Content-Type": "application/json"})
    started, first, pieces, finish = time.perf_counter(), None, 0, None
    with urllib.request.urlopen(req, timeout=600) as resp:
        if not stream:
            out = json.loads(resp.read())
            return {"total_s": time.perf_counter() - started, "tokens": out["usage"]["completion_tokens"],
                    "finish": out["choices"][0]["finish_reason"]}
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: {"):
                continue
            choice = json.loads(line[6:])["choices"][0]
            if choice["delta"].get("content"):
                first = first if first is not None else time.perf_counter() - started
                pieces += 1
            finish = choice["finish_reason"] or finish
    return {"first_s": first, "total_s": time.perf_counter() - started, "pieces": pieces, "finish": finish}


def noisy_copy(src: str, out: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.std() * 0.02)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return str(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="{smollm2}")
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--swaps", type=int, default=3)
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from prefloop.app.models.catalog import ensure_models, model_placeholders
    from prefloop.app.serving.serve import publish, start_serving, stop_serving
    from prefloop.core.round_settings import EngineSettings

    model = model_placeholders().get("smollm2") if args.model == "{smollm2}" else args.model
    ensure_models({"policy": {"model": model}})
    load_before = os.getloadavg()
    served = start_serving(model, None, chat_template="tokenizer", port=args.port, default_max_tokens=args.max_tokens,
                           engine=EngineSettings(dtype="float32", max_model_len=384, kv_cache_gb=0.25))
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": args.max_tokens, "temperature": 0}
    post(served.url, body, True)  # warm-up
    streamed, whole = [], []
    for _ in range(args.requests):  # interleaved, so a change in load hits both arms alike
        streamed.append(post(served.url, body, True))
        whole.append(post(served.url, body, False))
    swaps = []
    with tempfile.TemporaryDirectory() as tmp:
        other = noisy_copy(model, Path(tmp) / "noisy")
        for i in range(args.swaps):
            for k, weights in enumerate((other, model)):
                info = publish(weights, 2 * i + k + 1, name=served.name, timeout_s=600)
                swaps.append({"swap_s": info["swap_s"], "in_place": info["in_place"], "publish_s": info["publish_s"]})
    stop_serving(served.name)
    load_after = os.getloadavg()
    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    first, total, plain = med(streamed, "first_s"), med(streamed, "total_s"), med(whole, "total_s")
    ratio = first / plain
    swap = statistics.median(s["swap_s"] for s in swaps) if swaps else None
    busy = max(load_before[0], load_after[0]) > 1.5  # 2 cores: above this, other work shared them
    figures = {"first_token_s": first, "stream_total_s": total, "whole_answer_s": plain,
               "first_over_whole": ratio, "tokens": med(whole, "tokens"), "finish": [r["finish"] for r in whole],
               "pieces": [r["pieces"] for r in streamed], "swap_s_median": swap, "swaps": swaps,
               "in_place": all(s["in_place"] for s in swaps), "loadavg_before": load_before,
               "loadavg_after": load_after, "machine_busy": busy, "model": model}
    print(json.dumps(figures, indent=2))
    print(f"first token {first:.3f} s, whole answer {plain:.2f} s ({ratio:.3f}x), streamed total {total:.2f} s; "
          f"swap median {swap if swap is None else round(swap, 3)} s; load {load_before[0]:.1f}/{load_after[0]:.1f}")
    if not args.no_record:
        note = " (machine busy)" if busy else ""
        record("serve_stream", figures, goal="first token <= 0.3x the whole answer's time, 128 tokens, SmolLM2",
               met=ratio <= 0.3, headline=f"first token at {ratio:.3f}x of the whole answer ({first:.2f} s of "
                                          f"{plain:.2f} s, {med(whole, 'tokens'):.0f} tokens){note}")
        if swap is not None:
            record("swap_tied", {"swap_s_median": swap, "swaps": swaps, "machine_busy": busy, "model": model},
                   goal="in-place swap <= 0.5 s for SmolLM2 (tied embeddings) on CPU", met=swap <= 0.5,
                   headline=f"Serve swap in place {swap:.3f} s (median of {len(swaps)}){note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
