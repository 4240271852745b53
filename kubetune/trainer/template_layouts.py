"""LLaMA-Factory 0.9.5's chat templates, as data, and the jinja that renders them.

Each `Layout` is one `register_template(...)` of LLaMA-Factory's `src/llamafactory/data/template.py`,
written with the same slots, so a named template trains the text LLaMA-Factory trains: its prefix,
its system slot (the conversation's system text, else the template's default), then user and
assistant slots turn by turn. The user slot ends with the assistant header, as in LLaMA-Factory, so a
rendered prompt ends where the answer starts whether or not `add_generation_prompt` is set.

Not here: LLaMA-Factory's tool prompts and tool-call formats (per-template `ToolFormatter` and
`FunctionFormatter`). Until they are, a named template refuses tool-calling rows (a tools list or a
tool turn) instead of training a text LLaMA-Factory would not; `template: auto` renders them with
the tokenizer's own chat template. Also not here: the `efficient_eos` templates (glm4, chatglm3,
gemma2), whose labels are not the text's own tokens (an eos label where the next turn starts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """Slots are text with `{content}`, `{bos}` and `{eos}` markers (LLaMA-Factory's `{{content}}`,
    `{"bos_token"}` and `{"eos_token"}`)."""

    user: str = "{content}"
    assistant: str = "{content}{eos}"
    system: str = "{content}"
    prefix: str = ""
    default_system: str = ""
    # The token that ends an assistant turn: LLaMA-Factory's first stop word, else the eos token.
    stop: str = "eos"
    # LLaMA-Factory's Llama2Template: the system slot is prepended to the first user message.
    system_in_first_user: bool = False
    # LLaMA-Factory's ReasoningTemplate with its default enable_thinking: an answer without a
    # <think> block gets an empty one, and it is trained.
    empty_thought: bool = False


_CHATML_USER = "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
_CHATML_ASSISTANT = "{content}<|im_end|>\n"
_CHATML_SYSTEM = "<|im_start|>system\n{content}<|im_end|>\n"
_QWEN = Layout(user=_CHATML_USER, assistant=_CHATML_ASSISTANT, system=_CHATML_SYSTEM, stop="<|im_end|>")
_QWEN_THINKING = Layout(
    user=_CHATML_USER, assistant=_CHATML_ASSISTANT, system=_CHATML_SYSTEM, stop="<|im_end|>", empty_thought=True
)
_GEMMA = Layout(
    user="<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n",
    assistant="{content}<end_of_turn>\n",
    system="{content}\n\n",
    prefix="{bos}",
    stop="<end_of_turn>",
    system_in_first_user=True,
)
_DEEPSEEK3 = Layout(user="<｜User｜>{content}<｜Assistant｜>", prefix="{bos}")

# The order is the API's (TemplateName), after `auto`.
LAYOUTS: dict[str, Layout] = {
    "default": Layout(
        user="Human: {content}{eos}\nAssistant:", assistant="{content}{eos}\n", system="System: {content}{eos}\n"
    ),
    "empty": Layout(assistant="{content}"),
    "alpaca": Layout(
        user="### Instruction:\n{content}\n\n### Response:\n",
        assistant="{content}{eos}\n\n",
        default_system="Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n",
    ),
    "vicuna": Layout(
        user="USER: {content} ASSISTANT:",
        default_system="A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    ),
    "chatml": _QWEN,
    "qwen": Layout(
        user=_CHATML_USER,
        assistant=_CHATML_ASSISTANT,
        system=_CHATML_SYSTEM,
        default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        stop="<|im_end|>",
    ),
    "qwen2_vl": Layout(
        user=_CHATML_USER,
        assistant=_CHATML_ASSISTANT,
        system=_CHATML_SYSTEM,
        default_system="You are a helpful assistant.",
        stop="<|im_end|>",
    ),
    "qwen3": _QWEN_THINKING,
    "qwen3_nothink": _QWEN,
    "qwen3_vl": _QWEN_THINKING,
    "qwen3_vl_nothink": _QWEN,
    "qwen3_5": _QWEN_THINKING,
    "qwen3_5_nothink": _QWEN,
    "yi": _QWEN,
    "llama2": Layout(
        user="{bos}[INST] {content} [/INST]", system="<<SYS>>\n{content}\n<</SYS>>\n\n", system_in_first_user=True
    ),
    "llama3": Layout(
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant="{content}<|eot_id|>",
        system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        prefix="{bos}",
        stop="<|eot_id|>",
    ),
    "llama4": Layout(
        user="<|header_start|>user<|header_end|>\n\n{content}<|eot|><|header_start|>assistant<|header_end|>\n\n",
        assistant="{content}<|eot|>",
        system="<|header_start|>system<|header_end|>\n\n{content}<|eot|>",
        prefix="{bos}",
        stop="<|eot|>",
    ),
    "mistral": Layout(
        user="[INST] {content}[/INST]",
        assistant=" {content}{eos}",
        system="{content}\n\n",
        prefix="{bos}",
        system_in_first_user=True,
    ),
    "mistral_small": Layout(
        user="[INST]{content}[/INST]", system="[SYSTEM_PROMPT]{content}[/SYSTEM_PROMPT]", prefix="{bos}"
    ),
    "gemma": _GEMMA,
    "gemma3": _GEMMA,
    "deepseek": Layout(user="User: {content}\n\nAssistant:", system="{content}\n\n", prefix="{bos}"),
    "deepseek3": _DEEPSEEK3,
    "deepseekr1": Layout(user=_DEEPSEEK3.user, prefix="{bos}", empty_thought=True),
    "phi": Layout(
        user="<|user|>\n{content}<|end|>\n<|assistant|>\n",
        assistant="{content}<|end|>\n",
        system="<|system|>\n{content}<|end|>\n",
        stop="<|end|>",
    ),
    "phi4": Layout(
        user="<|im_start|>user<|im_sep|>{content}<|im_end|><|im_start|>assistant<|im_sep|>",
        assistant="{content}<|im_end|>",
        system="<|im_start|>system<|im_sep|>{content}<|im_end|>",
        stop="<|im_end|>",
    ),
    "phi4_mini": Layout(
        user="<|user|>{content}<|end|><|assistant|>",
        assistant="{content}<|end|>",
        system="<|system|>{content}<|end|>",
        stop="<|end|>",
    ),
}

# LLaMA-Factory's thought_words joined: what an answer without a <think> block is given.
EMPTY_THOUGHT = "<think>\n\n</think>\n\n"

_MARKER = re.compile(r"(\{content\}|\{bos\}|\{eos\})")
_VARIABLES = {"{bos}": "bos", "{eos}": "eos_token"}


def _expr(slot: str, content: str) -> str:
    """A slot as a jinja expression, `content` standing for its {content}."""
    parts = []
    for piece in _MARKER.split(slot):
        if piece == "{content}":
            parts.append(content)
        elif piece in _VARIABLES:
            parts.append(_VARIABLES[piece])
        elif piece:
            parts.append(repr(piece))
    return " + ".join(parts) or "''"


def layout_jinja(name: str, layout: Layout) -> str:
    """The chat template (single-line jinja, so whitespace control never matters)."""
    refusal = repr(
        f"template {name} does not render tool calls as LLaMA-Factory does yet: "
        "use template: auto (the tokenizer's own tool format) for tool-calling data"
    )
    system = _expr(layout.system, "ns.sys")
    answer = _expr(layout.assistant, "m['content']")
    if layout.empty_thought:
        answer = f"(('' if '<think>' in m['content'] or '</think>' in m['content'] else {EMPTY_THOUGHT!r}) + {answer})"
    question = "m['content']"
    if layout.system_in_first_user:
        question = f"(({system}) if loop.first and ns.sys else '') + m['content']"
    return (
        "{%- set bos = bos_token if bos_token is defined and bos_token else '' -%}"
        f"{{%- set ns = namespace(sys={layout.default_system!r}) -%}}"
        "{%- if messages and messages[0]['role'] == 'system' and messages[0]['content'] -%}"
        "{%- set ns.sys = messages[0]['content'] -%}{%- endif -%}"
        "{%- if tools or messages | selectattr('role', 'equalto', 'tool') | list -%}"
        f"{{{{ raise_exception({refusal}) }}}}{{%- endif -%}}"
        + (f"{{{{ {_expr(layout.prefix, '')} }}}}" if layout.prefix else "")
        + ("" if layout.system_in_first_user else f"{{%- if ns.sys -%}}{{{{ {system} }}}}{{%- endif -%}}")
        + "{%- for m in messages if m['role'] != 'system' -%}"
        f"{{%- if m['role'] == 'assistant' -%}}{{{{ {answer} }}}}"
        f"{{%- else -%}}{{{{ {_expr(layout.user, question)} }}}}{{%- endif -%}}"
        "{%- endfor -%}"
    )
