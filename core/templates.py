"""Chat templates: turning a conversation into the exact text a model was trained on.

Styles:
- ``tokenizer``: the tokenizer's own ``chat_template`` (``apply_chat_template``).
- ``tulu``: TuluV2 / Zephyr-style ``<|user|>\\n...\\n<|assistant|>\\n``, used by the Contextual KTO and
  Archangel cards.
- ``mistral``: Mistral-Instruct ``[INST] ... [/INST]``, used by the Snorkel card.
- ``ultrarm``: UltraRM's ``Human: ...\\nAssistant: ...``; a reward model is fed in its own template, not the
  policy's (the ReMax card scored Mistral's answers with UltraRM this way).

One rule for beginning-of-sequence tokens, everywhere: rendered text never starts with BOS. Tokenisation
adds it (``add_special_tokens=True``) when the tokenizer wants one, so BOS is never doubled. When a
tokenizer's own template writes BOS and the tokenizer adds BOS itself, it is stripped here. A tokenizer that adds
none keeps it: SmolLM2's "BOS" is ``<|im_start|>``, the first token of its ChatML turns, not a sequence marker.
"""

from __future__ import annotations

from typing import Any, Sequence

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


# The ``tulu`` and ``ultrarm`` styles as Jinja chat templates, for the tokenizers prefloop builds itself (the
# tiny world's): ``apply_chat_template`` with them renders what ``render_prompt`` renders (tulu: after the
# BOS it writes, which the ``tokenizer`` style strips; ultrarm: plus the space before the answer).
TULU_JINJA = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
ULTRARM_JINJA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'Human: ' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'System: ' + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)


def validate_messages(messages: Any) -> list[Message]:
    """Check a chat conversation; raise ValueError saying what is wrong. Returns a clean copy."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {role, content}")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}] must have 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ValueError(f"messages[{i}].role {m['role']!r} is not one of {ROLES}")
        if not isinstance(m["content"], str):
            raise ValueError(f"messages[{i}].content must be a string")
        clean.append({"role": m["role"], "content": m["content"]})
    if clean[-1]["role"] != "user":
        raise ValueError("the last message of a prompt must be the user's")
    return clean


def _tulu(messages: Sequence[Message], eos: str) -> str:
    parts = []
    for m in messages:
        text = f"<|{m['role']}|>\n{m['content']}\n"
        if m["role"] == "assistant":
            text = f"<|assistant|>\n{m['content']}{eos}\n"
        parts.append(text)
    return "".join(parts)


def _mistral(messages: Sequence[Message], eos: str) -> str:
    # Mistral-Instruct has no system role: a system message is prepended to the first user turn.
    system = ""
    out = []
    for m in messages:
        if m["role"] == "system":
            system = m["content"] + "\n\n"
        elif m["role"] == "user":
            out.append(f"[INST] {system}{m['content']} [/INST]")
            system = ""
        else:
            out.append(f"{m['content']}{eos}")
    return "".join(out)


def _ultrarm(messages: Sequence[Message]) -> str:
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "\n".join(f"{names[m['role']]}: {m['content']}" for m in messages)


def render_prompt(messages: Sequence[Message], style: str, tokenizer: Any = None) -> str:
    """Render a conversation ending in a user turn, followed by the assistant's generation prefix."""
    eos = getattr(tokenizer, "eos_token", None) or "</s>"
    if style == "tulu":
        return _tulu(messages, eos) + "<|assistant|>\n"
    if style == "mistral":
        return _mistral(messages, eos)
    if style == "ultrarm":
        return _ultrarm(messages) + "\nAssistant:"
    if style == "tokenizer":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat_template 'tokenizer' needs a tokenizer that has a chat_template")
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        bos = getattr(tokenizer, "bos_token", None)
        return text[len(bos):] if bos and text.startswith(bos) and _adds_bos(tokenizer) else text
    raise ValueError(f"unknown chat template style {style!r}")


def _adds_bos(tokenizer: Any) -> bool:
    """Whether tokenising with ``add_special_tokens=True`` puts BOS first (as Llama's tokenizers do)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and list(tokenizer("x", add_special_tokens=True)["input_ids"][:1]) == [bos]


def render_conversation(messages: Sequence[Message], response: str, style: str, tokenizer: Any = None) -> str:
    """Render prompt + response as one text (for scoring with a reward model in its own template)."""
    prompt = render_prompt(messages, style, tokenizer)
    if style == "ultrarm":
        return f"{prompt} {response}"
    return prompt + response


def last_user_text(messages: Sequence[Message]) -> str:
    """The instruction a judge such as PairRM sees: the last user turn."""
    for m in reversed(messages):
        if m["role"] == "user":
            return m["content"]
    raise ValueError("no user message")


def generation_text(messages: Sequence[Message], style: str, tokenizer: Any = None,
                    control_token: str | None = None) -> str:
    """What a model is asked to continue: the rendered prompt, then the model's control token if it has one.

    A conditional-SFT model (Archangel) was trained on ``prompt <|good|> answer``: asked without the token it
    answers out of its training distribution. Rollout, evaluation and Serve all render through this."""
    return render_prompt(messages, style, tokenizer) + (control_token or "")


# Jinja chat templates that reproduce render_prompt: saved into every trained model's tokenizer, so that
# apply_chat_template (AlpacaEval, vLLM's OpenAI server, Serve) prompts it in the format it was trained on.
# They start with BOS (when the tokenizer has one) because such tools tokenise the templated text without
# adding special tokens; render_prompt('tokenizer') strips it again (the BOS rule above).
_BOS = "{%- if bos_token %}{{ bos_token }}{% endif -%}"
_TULU_JINJA = (_BOS + "{%- for m in messages -%}"
               "{%- if m['role'] == 'assistant' -%}{{ '<|assistant|>\\n' + m['content'] + eos_token + '\\n' }}"
               "{%- else -%}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '\\n' }}{%- endif -%}"
               "{%- endfor -%}"
               "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}__CONTROL__{%- endif -%}")
_MISTRAL_JINJA = (_BOS + "{%- set ns = namespace(system='') -%}{%- for m in messages -%}"
                  "{%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] + '\\n\\n' -%}"
                  "{%- elif m['role'] == 'user' -%}{{ '[INST] ' + ns.system + m['content'] + ' [/INST]' }}"
                  "{%- set ns.system = '' -%}"
                  "{%- else -%}{{ m['content'] + eos_token }}{%- endif -%}{%- endfor -%}"
                  "{%- if add_generation_prompt -%}__CONTROL__{%- endif -%}")
_ULTRARM_JINJA = ("{%- for m in messages -%}{%- if not loop.first -%}{{ '\\n' }}{%- endif -%}"
                  "{{ {'user': 'Human', 'assistant': 'Assistant', 'system': 'System'}[m['role']] + ': ' + "
                  "m['content'] }}{%- endfor -%}"
                  "{%- if add_generation_prompt -%}{{ '\\nAssistant:' }}__CONTROL__{%- endif -%}")
_JINJA = {"tulu": _TULU_JINJA, "mistral": _MISTRAL_JINJA, "ultrarm": _ULTRARM_JINJA}


def _jinja_literal(text: str) -> str:
    return "{{ " + repr(text) + " }}" if text else ""


def chat_template_for(style: str, base_template: str | None = None, control_token: str | None = None) -> str | None:
    """The Jinja chat template a model trained in ``style`` should carry (with its control token after the
    generation prompt, for conditional SFT). ``tokenizer`` style: the base's own template, kept as it is
    (control token appended to its generation prompt); None if the base has none."""
    if style in _JINJA:
        return _JINJA[style].replace("__CONTROL__", _jinja_literal(control_token or ""))
    if style != "tokenizer":
        raise ValueError(f"unknown chat template style {style!r}")
    if base_template is None or not control_token or control_token in base_template:
        return base_template
    return base_template + "{%- if add_generation_prompt -%}" + _jinja_literal(control_token) + "{%- endif -%}"
