"""Chat templates: the tokenizer's own (`auto`) or a named one, as a Hugging Face jinja string.

Training renders every conversation with `ChatTemplate.jinja`, and `ChatTemplate.apply_to` writes
the same string into the exported tokenizer, so vLLM (which reads `tokenizer.chat_template`) formats
prompts exactly as training did, and `stop_token_ids` go into `generation_config.eos_token_id` so
generation stops where the trained turns end.

Named templates are LLaMA-Factory 0.9.5's, by the same names (`kubetune.trainer.template_layouts`).
Every template here is prefix-consistent: rendering
the first turns with `add_generation_prompt=True` gives a prefix of rendering the whole conversation,
which is what the label masking relies on (see `kubetune.trainer.data.tokenize`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.v1alpha1 import TEMPLATE_NAMES
from kubetune.trainer.template_layouts import LAYOUTS, layout_jinja

__all__ = ["TEMPLATE_NAMES", "ChatTemplate", "TemplateError", "render", "resolve_template"]


class TemplateError(ValueError):
    """The template cannot be used with this tokenizer; str() says what to pick instead."""


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    jinja: str
    stop_tokens: list[str] = field(default_factory=list)
    # The layout's efficient_eos: the labelling adds eos labels the text does not hold (see tokenize).
    efficient_eos: bool = False

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


# End-of-turn markers of common tokenizer templates, for `auto`.
_KNOWN_STOPS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>")


def named_jinja(name: str) -> str:
    return layout_jinja(name, LAYOUTS[name])


def resolve_template(name: str, tokenizer: Any) -> ChatTemplate:
    """`auto` -> the tokenizer's own chat template; otherwise the named template."""
    if name not in TEMPLATE_NAMES:
        raise TemplateError(f"unknown template '{name}': pick one of {', '.join(TEMPLATE_NAMES)}")
    if name == "auto":
        return _tokenizer_template(tokenizer)
    layout = LAYOUTS[name]
    stop = layout.stop
    jinja = named_jinja(name)
    if (stop == "eos" or "eos_token" in jinja or layout.efficient_eos) and not tokenizer.eos_token:
        raise TemplateError(f"template '{name}' ends assistant turns with the eos token, but the tokenizer has none")
    stops = [tokenizer.eos_token if stop == "eos" else stop, *layout.more_stops]
    return ChatTemplate(name=name, jinja=jinja, stop_tokens=stops, efficient_eos=layout.efficient_eos)


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
