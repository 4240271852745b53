"""Chat templates: the tokenizer's own (`auto`) or a named one, as a Hugging Face jinja string.

Training renders every conversation with `ChatTemplate.jinja`, and `ChatTemplate.apply_to` writes
the same string into the exported tokenizer, so vLLM (which reads `tokenizer.chat_template`) formats
prompts exactly as training did, and `stop_token_ids` go into `generation_config.eos_token_id` so
generation stops where the trained turns end.

Named templates follow LLaMA-Factory's layouts. Every template here is prefix-consistent: rendering
the first turns with `add_generation_prompt=True` gives a prefix of rendering the whole conversation,
which is what the label masking relies on (see `kubetune.trainer.data.tokenize`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.v1alpha1 import TEMPLATE_NAMES

__all__ = ["TEMPLATE_NAMES", "ChatTemplate", "TemplateError", "render", "resolve_template"]


class TemplateError(ValueError):
    """The template cannot be used with this tokenizer; str() says what to pick instead."""


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    jinja: str
    stop_tokens: list[str] = field(default_factory=list)

    def apply_to(self, tokenizer: Any) -> None:
        """Make `tokenizer` format and stop exactly as training did (call before saving it)."""
        tokenizer.chat_template = self.jinja
        first = self.stop_tokens[0] if self.stop_tokens else None
        # A chatml template on a base model whose eos is <|endoftext|>: serving must stop on <|im_end|>.
        if first and first != tokenizer.eos_token and _single_token_id(tokenizer, first) is not None:
            tokenizer.eos_token = first

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Token ids that end an assistant turn, then the tokenizer's eos (for generation_config)."""
        ids: list[int] = []
        for token in [*self.stop_tokens, tokenizer.eos_token]:
            tid = _single_token_id(tokenizer, token) if token else None
            if tid is not None and tid not in ids:
                ids.append(tid)
        return ids

    def unknown_stop_tokens(self, tokenizer: Any) -> list[str]:
        """Stop strings that are not one token of this tokenizer (generation cannot stop on them)."""
        return [t for t in self.stop_tokens if _single_token_id(tokenizer, t) is None]


def _single_token_id(tokenizer: Any, token: str) -> int | None:
    vocab_id = tokenizer.convert_tokens_to_ids(token)
    if vocab_id is None or vocab_id == tokenizer.unk_token_id:
        return None
    return int(vocab_id)


# --------------------------------------------------------------------------------------------
# Named templates. Written as single-line jinja (no raw newlines), so whitespace control never matters.
# --------------------------------------------------------------------------------------------

# The system text: the conversation's own system turn, else the template's default; tools are
# described after it (rows with a tools column). `sys_default` is substituted per template.
_SYSTEM = (
    "{%- set bos = bos_token if bos_token is defined and bos_token else '' -%}"
    "{%- set ns = namespace(sys=SYS_DEFAULT) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}{%- set ns.sys = messages[0]['content'] -%}{%- endif -%}"
    "{%- if tools -%}{%- set ns.sys = (ns.sys + '\\n\\n' if ns.sys else '') + "
    "'You have access to the following tools:\\n' + (tools | tojson) -%}{%- endif -%}"
)
_LOOP = "{%- for m in messages if m['role'] != 'system' -%}"


def _sys(default: str | None) -> str:
    return _SYSTEM.replace("SYS_DEFAULT", repr(default) if default else "''")


_CHATML_BODY = (
    "{%- if ns.sys -%}{{ '<|im_start|>system\\n' + ns.sys + '<|im_end|>\\n' }}{%- endif -%}"
    + _LOOP
    + "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

_QWEN_BODY = (
    "{%- if ns.sys -%}{{ '<|im_start|>system\\n' + ns.sys + '<|im_end|>\\n' }}{%- endif -%}"
    + _LOOP
    + "{%- if m['role'] == 'tool' -%}"
    "{{ '<|im_start|>user\\n<tool_response>\\n' + m['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else -%}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

_LLAMA3_BODY = (
    "{{ bos }}"
    "{%- if ns.sys -%}{{ '<|start_header_id|>system<|end_header_id|>\\n\\n' + ns.sys + '<|eot_id|>' }}{%- endif -%}"
    + _LOOP
    + "{{ '<|start_header_id|>' + ('ipython' if m['role'] == 'tool' else m['role']) + "
    "'<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)

# [INST] turns; the system prompt goes into the first user turn, as Llama 2 chat does.
_LLAMA2_BODY = (
    "{%- set ns.first = true -%}"
    + _LOOP
    + "{%- if m['role'] == 'assistant' -%}{{ ' ' + m['content'] + ' ' + eos_token }}"
    "{%- elif ns.first and ns.sys -%}"
    "{{ bos + '[INST] <<SYS>>\\n' + ns.sys + '\\n<</SYS>>\\n\\n' + m['content'] + ' [/INST]' }}"
    "{%- else -%}{{ bos + '[INST] ' + m['content'] + ' [/INST]' }}{%- endif -%}"
    "{%- set ns.first = false -%}"
    "{%- endfor -%}"
)

_MISTRAL_BODY = (
    "{{ bos }}{%- set ns.first = true -%}"
    + _LOOP
    + "{%- if m['role'] == 'assistant' -%}{{ ' ' + m['content'] + eos_token }}"
    "{%- elif ns.first and ns.sys -%}{{ '[INST] ' + ns.sys + '\\n\\n' + m['content'] + '[/INST]' }}"
    "{%- else -%}{{ '[INST] ' + m['content'] + '[/INST]' }}{%- endif -%}"
    "{%- set ns.first = false -%}"
    "{%- endfor -%}"
)

_GEMMA_BODY = (
    "{{ bos }}{%- set ns.first = true -%}"
    + _LOOP
    + "{%- if m['role'] == 'assistant' -%}{{ '<start_of_turn>model\\n' + m['content'] + '<end_of_turn>\\n' }}"
    "{%- elif ns.first and ns.sys -%}"
    "{{ '<start_of_turn>user\\n' + ns.sys + '\\n\\n' + m['content'] + '<end_of_turn>\\n' }}"
    "{%- else -%}{{ '<start_of_turn>user\\n' + m['content'] + '<end_of_turn>\\n' }}{%- endif -%}"
    "{%- set ns.first = false -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

_PHI_BODY = (
    "{%- if ns.sys -%}{{ '<|system|>\\n' + ns.sys + '<|end|>\\n' }}{%- endif -%}"
    + _LOOP
    + "{{ '<|' + ('user' if m['role'] == 'tool' else m['role']) + '|>\\n' + m['content'] + '<|end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)

_DEEPSEEK_BODY = (
    "{{ bos }}{%- if ns.sys -%}{{ ns.sys + '\\n\\n' }}{%- endif -%}"
    + _LOOP
    + "{%- if m['role'] == 'assistant' -%}{{ 'Assistant: ' + m['content'] + eos_token }}"
    "{%- else -%}{{ 'User: ' + m['content'] + '\\n\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)

_ALPACA_BODY = (
    "{%- if ns.sys -%}{{ ns.sys + '\\n\\n' }}{%- endif -%}"
    + _LOOP
    + "{%- if m['role'] == 'assistant' -%}{{ m['content'] + eos_token + '\\n\\n' }}"
    "{%- else -%}{{ '### Instruction:\\n' + m['content'] + '\\n\\n### Response:\\n' }}{%- endif -%}"
    "{%- endfor -%}"
)

# For base models without a chat template (LLaMA-Factory's `default`).
_DEFAULT_BODY = (
    "{%- if ns.sys -%}{{ 'System: ' + ns.sys + '\\n' }}{%- endif -%}"
    + _LOOP
    + "{%- if m['role'] == 'assistant' -%}{{ ' ' + m['content'] + eos_token + '\\n' }}"
    "{%- else -%}{{ 'Human: ' + m['content'] + '\\nAssistant:' }}{%- endif -%}"
    "{%- endfor -%}"
)

_ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
_QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# name -> (body, default system, stop tokens; "eos" means the tokenizer's eos token)
_NAMED: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "chatml": (_CHATML_BODY, None, ("<|im_end|>",)),
    "qwen": (_QWEN_BODY, _QWEN_SYSTEM, ("<|im_end|>",)),
    "llama3": (_LLAMA3_BODY, None, ("<|eot_id|>",)),
    "llama2": (_LLAMA2_BODY, None, ("eos",)),
    "mistral": (_MISTRAL_BODY, None, ("eos",)),
    "gemma": (_GEMMA_BODY, None, ("<end_of_turn>",)),
    "phi": (_PHI_BODY, None, ("<|end|>",)),
    "deepseek": (_DEEPSEEK_BODY, None, ("eos",)),
    "alpaca": (_ALPACA_BODY, _ALPACA_SYSTEM, ("eos",)),
    "default": (_DEFAULT_BODY, None, ("eos",)),
}

# End-of-turn markers of common tokenizer templates, for `auto`.
_KNOWN_STOPS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>")


def named_jinja(name: str) -> str:
    body, system, _ = _NAMED[name]
    return _sys(system) + body


def resolve_template(name: str, tokenizer: Any) -> ChatTemplate:
    """`auto` -> the tokenizer's own chat template; otherwise the named template."""
    if name not in TEMPLATE_NAMES:
        raise TemplateError(f"unknown template '{name}': pick one of {', '.join(TEMPLATE_NAMES)}")
    if name == "auto":
        return _tokenizer_template(tokenizer)
    body, _, stops = _NAMED[name]
    uses_eos = "eos" in stops or "eos_token" in body
    if uses_eos and not tokenizer.eos_token:
        raise TemplateError(f"template '{name}' ends assistant turns with the eos token, but the tokenizer has none")
    stop_tokens = [tokenizer.eos_token if s == "eos" else s for s in stops]
    return ChatTemplate(name=name, jinja=named_jinja(name), stop_tokens=stop_tokens)


def _tokenizer_template(tokenizer: Any) -> ChatTemplate:
    jinja = tokenizer.chat_template
    if isinstance(jinja, dict):  # several named templates: the default one is the chat template
        jinja = jinja.get("default")
    if not jinja:
        raise TemplateError(
            "template: auto needs the tokenizer's own chat template, and this tokenizer has none "
            "(a base model?). Set template to the model family's one (chatml, qwen, llama3, llama2, mistral, "
            "gemma, phi, deepseek), or to default or alpaca for a plain base model."
        )
    stops = [t for t in _KNOWN_STOPS if t in jinja and _single_token_id(tokenizer, t) is not None]
    if not stops and tokenizer.eos_token:
        stops = [tokenizer.eos_token]
    return ChatTemplate(name="tokenizer", jinja=str(jinja), stop_tokens=stops)


def render(
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    *,
    special_tokens: dict[str, str],
    tools: list[Any] | None = None,
    add_generation_prompt: bool = False,
) -> str:
    """Render like `tokenizer.apply_chat_template(..., tokenize=False)` does, with transformers' jinja setup."""
    from jinja2.runtime import new_context

    compiled, flat_globals = _compiled(template.jinja)
    variables = {
        **flat_globals,
        "messages": messages,
        "tools": tools,
        "documents": None,
        "add_generation_prompt": add_generation_prompt,
        **special_tokens,
    }
    # What jinja's Template.render does, but with the globals flattened once: its own context set-up walks
    # a ChainMap of them twice per call, a third of the cost of rendering a short conversation.
    ctx = new_context(compiled.environment, compiled.name, compiled.blocks, variables, True, flat_globals)
    try:
        text: str = compiled.environment.concat(compiled.root_render_func(ctx))
    except Exception:
        compiled.environment.handle_exception()
    return text


@functools.lru_cache(maxsize=32)
def _compiled(jinja: str) -> tuple[Any, dict[str, Any]]:
    """transformers' compiled template (same sandboxed environment, filters and globals) and its globals."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    compiled = _compile_jinja_template(jinja)
    return compiled, dict(compiled.globals)
