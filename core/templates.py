"""Chat templates: turning a conversation into the exact text a model was trained on.

Styles:
- ``tokenizer``: the tokenizer's own ``chat_template`` (``apply_chat_template``).
- ``tulu``: TuluV2 ``<|user|>\\n...\\n<|assistant|>\\n``, used by the Contextual KTO and Archangel cards.
  Earlier assistant turns end in a newline, not EOS: the cards say "No end-of-sequence (EOS) token is added to
  the prompt", and HALOs' loader (``assistant_suffix: ""``) built the HH / OASST training prompts that way.
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
# Archangel's conditional-SFT control tokens (HALOs' config/loss/csft.yaml): <|good|> / <|bad|> before the answer.
CONTROL_TOKENS = ("<|good|>", "<|bad|>")
# The Jinja variable under which a saved template leaves its control token out: prefloop renders the format
# with it set and appends the token itself, once (``generation_text``); other tools leave it unset.
NO_CONTROL = "prefloop_no_control_token"


# The ``tulu`` and ``ultrarm`` styles as Jinja chat templates, for the tokenizers prefloop builds itself (the
# tiny world's): ``apply_chat_template`` with them renders what ``render_prompt`` renders (tulu: after the
# BOS it writes, which the ``tokenizer`` style strips; ultrarm: plus the space before the answer).
TULU_JINJA = (
    "{{ bos_token }}{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
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


def _tulu(messages: Sequence[Message]) -> str:
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)


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
        return _tulu(messages) + "<|assistant|>\n"
    if style == "mistral":
        return _mistral(messages, eos)
    if style == "ultrarm":
        return _ultrarm(messages) + "\nAssistant:"
    if style == "tokenizer":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat_template 'tokenizer' needs a tokenizer that has a chat_template")
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True,
                                             **{NO_CONTROL: True})
        _refuse_control_suffix(text)
        bos = getattr(tokenizer, "bos_token", None)
        return text[len(bos):] if bos and text.startswith(bos) and _adds_bos(tokenizer) else text
    raise ValueError(f"unknown chat template style {style!r}")


def _refuse_control_suffix(text: str) -> None:
    """A template that appends a control token whatever ``NO_CONTROL`` says would have it doubled."""
    for token in CONTROL_TOKENS:
        if text.endswith(token):
            raise ValueError(f"the tokenizer's chat template appends the control token {token} itself (a model saved "
                             f"without the '{NO_CONTROL}' guard): prefloop appends it once, so it would be doubled; "
                             f"save the model again with app.storage.model_files.stamp_model")


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
    answers out of its training distribution. Rollout, evaluation and Serve all render through this. This is the
    one place the token is added: ``render_prompt`` never renders it, whatever the style (a saved template's
    token sits behind ``NO_CONTROL``), so the text is the training text (``train_data.add_prompt_text``)."""
    return render_prompt(messages, style, tokenizer) + (control_token or "")


# Jinja chat templates that reproduce render_prompt: saved into every trained model's tokenizer, so that
# apply_chat_template (AlpacaEval, vLLM's OpenAI server, Serve) prompts it in the format it was trained on.
# They start with BOS (when the tokenizer has one) because such tools tokenise the templated text without
# adding special tokens; render_prompt('tokenizer') strips it again (the BOS rule above). A conditional-SFT
# model's control token follows the generation prompt unless NO_CONTROL is set (``_control_suffix``).
_BOS = "{%- if bos_token %}{{ bos_token }}{% endif -%}"
_TULU_JINJA = (_BOS + "{%- for m in messages -%}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '\\n' }}{%- endfor -%}"
               "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}")
_MISTRAL_JINJA = (_BOS + "{%- set ns = namespace(system='') -%}{%- for m in messages -%}"
                  "{%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] + '\\n\\n' -%}"
                  "{%- elif m['role'] == 'user' -%}{{ '[INST] ' + ns.system + m['content'] + ' [/INST]' }}"
                  "{%- set ns.system = '' -%}"
                  "{%- else -%}{{ m['content'] + eos_token }}{%- endif -%}{%- endfor -%}")
_ULTRARM_JINJA = (_BOS + "{%- for m in messages -%}{%- if not loop.first -%}{{ '\\n' }}{%- endif -%}"
                  "{{ {'user': 'Human', 'assistant': 'Assistant', 'system': 'System'}[m['role']] + ': ' + "
                  "m['content'] }}{%- endfor -%}"
                  "{%- if add_generation_prompt -%}{{ '\\nAssistant:' }}{%- endif -%}")
_JINJA = {"tulu": _TULU_JINJA, "mistral": _MISTRAL_JINJA, "ultrarm": _ULTRARM_JINJA}


def _control_suffix(token: str, guarded: bool = True) -> str:
    guard = f" and not {NO_CONTROL}" if guarded else ""  # unguarded: a suffix that always appends the token
    return "{%- if add_generation_prompt" + guard + " -%}{{ " + repr(token) + " }}{%- endif -%}"


def chat_template_for(style: str, base_template: str | None = None, control_token: str | None = None) -> str | None:
    """The Jinja chat template a model trained in ``style`` should carry: the style's own (``tokenizer``: the
    base's, None if it has none), then, for conditional SFT, the control token after the generation prompt.

    A control suffix an earlier round saved into the base's template is dropped first, so a KTO round on top of
    a conditional-SFT model does not keep asking other tools for ``<|good|>``."""
    if style in _JINJA:
        template = _JINJA[style]
    elif style == "tokenizer":
        if base_template is None:
            return None
        template = base_template
        for token in CONTROL_TOKENS:
            template = template.removesuffix(_control_suffix(token)).removesuffix(_control_suffix(token, False))
    else:
        raise ValueError(f"unknown chat template style {style!r}")
    return template + _control_suffix(control_token) if control_token else template
