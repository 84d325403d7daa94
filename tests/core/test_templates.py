"""Chat templates render the exact formats of the public recipes, and BOS is never doubled."""

import pytest

from prefloop.core.templates import last_user_text, render_conversation, render_prompt, validate_messages

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Name a fruit."}]


def test_tulu():
    assert render_prompt([{"role": "user", "content": "Hi"}], "tulu") == "<|user|>\nHi\n<|assistant|>\n"


def test_tulu_multi_turn_has_no_eos():
    """The Contextual KTO card's own example, "No end-of-sequence (EOS) token is added to the prompt", and HALOs'
    HH / OASST prompts (assistant_suffix "") carry no EOS after an earlier assistant turn."""
    card = [{"role": "user", "content": "Hi! I'm looking for a cake recipe."},
            {"role": "assistant", "content": "What kind of cake?"}, {"role": "user", "content": "Chocolate cake."}]
    expected = ("<|user|>\nHi! I'm looking for a cake recipe.\n<|assistant|>\nWhat kind of cake?\n"
                "<|user|>\nChocolate cake.\n<|assistant|>\n")
    assert render_prompt(card, "tulu") == expected
    assert render_prompt(card, "tulu", FakeTokenizer()) == expected  # whatever the tokenizer's EOS


def test_mistral():
    assert render_prompt([{"role": "user", "content": "Hi"}], "mistral") == "[INST] Hi [/INST]"
    assert render_prompt(CHAT, "mistral") == "[INST] Hi [/INST]Hello</s>[INST] Name a fruit. [/INST]"
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render_prompt(with_system, "mistral") == "[INST] Be brief.\n\nHi [/INST]"


def test_ultrarm_prompt_and_conversation():
    msgs = [{"role": "user", "content": "Hi"}]
    assert render_prompt(msgs, "ultrarm") == "Human: Hi\nAssistant:"
    assert render_conversation(msgs, "Hello", "ultrarm") == "Human: Hi\nAssistant: Hello"


class FakeTokenizer:
    """Only what render_prompt reads: a chat_template, apply_chat_template and whether tokenising adds BOS
    (isolates the BOS rule)."""
    bos_token, bos_token_id, eos_token, chat_template = "<s>", 1, "</s>", "x"
    adds_bos = True

    suffix = ""  # what the template writes after the generation prompt whatever it is asked

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, **variables):
        return "<s>" + "".join(m["content"] for m in messages) + ("|gen|" + self.suffix if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens and self.adds_bos else []) + [ord(c) for c in text]}


def test_tokenizer_template_strips_bos():
    assert render_prompt([{"role": "user", "content": "Hi"}], "tokenizer", FakeTokenizer()) == "Hi|gen|"


def test_tokenizer_template_keeps_a_bos_the_tokenizer_does_not_add():
    """SmolLM2's bos_token is <|im_start|>, its ChatML turn opener, and its tokenizer adds no BOS: stripping it
    would cut the first turn's opener."""
    tok = FakeTokenizer()
    tok.adds_bos = False
    assert render_prompt([{"role": "user", "content": "Hi"}], "tokenizer", tok) == "<s>Hi|gen|"


def test_a_template_that_always_appends_a_control_token_is_refused():
    """Such a template (saved before the NO_CONTROL guard) and generation_text would ask for <|good|><|good|>."""
    tok = FakeTokenizer()
    tok.suffix = "<|good|>"
    with pytest.raises(ValueError, match="appends the control token <\\|good\\|> itself"):
        render_prompt([{"role": "user", "content": "Hi"}], "tokenizer", tok)


def test_tokenizer_template_needs_a_template():
    with pytest.raises(ValueError, match="chat_template"):
        render_prompt(CHAT, "tokenizer", None)


@pytest.mark.parametrize("bad, match", [
    ([], "non-empty"),
    ([{"role": "user"}], "'role' and 'content'"),
    ([{"role": "robot", "content": "x"}], "not one of"),
    ([{"role": "user", "content": 3}], "string"),
    ([{"role": "assistant", "content": "x"}], "last message"),
])
def test_validate_messages(bad, match):
    with pytest.raises(ValueError, match=match):
        validate_messages(bad)


def test_last_user_text():
    assert last_user_text(CHAT) == "Name a fruit."


def test_jinja_templates_render_what_render_prompt_renders():
    """The Jinja forms of the tulu and ultrarm styles (the tiny world's tokenizers carry them) agree with the
    Python renderers, so a model trained through one is prompted the same way through the other."""
    import jinja2

    from prefloop.core.templates import TULU_JINJA, ULTRARM_JINJA

    def jinja(template, messages, prompt=True):
        return jinja2.Template(template).render(messages=messages, add_generation_prompt=prompt,
                                                bos_token="<s>", eos_token="</s>")

    assert jinja(TULU_JINJA, CHAT) == "<s>" + render_prompt(CHAT, "tulu")
    msgs = [{"role": "user", "content": "Hi"}]
    assert jinja(ULTRARM_JINJA, msgs) == render_prompt(msgs, "ultrarm") + " "
    assert jinja(ULTRARM_JINJA, msgs) + "Hello" == render_conversation(msgs, "Hello", "ultrarm")
