"""LLaMA-Factory 0.9.5's chat templates, as data, and the jinja that renders them.

Each `Layout` is one `register_template(...)` of LLaMA-Factory's `src/llamafactory/data/template.py`,
written with the same slots, so a named template trains the text LLaMA-Factory trains: its prefix,
its system slot (the conversation's system text, else the template's default), then user and
assistant slots turn by turn. The user slot ends with the assistant header, as in LLaMA-Factory, so a
rendered prompt ends where the answer starts whether or not `add_generation_prompt` is set.

Tool calling is LLaMA-Factory's too: a template's `tool_format` names how it writes the tools
list into the system slot (its `ToolFormatter`) and the calls of a function turn (its
`FunctionFormatter`), with the prompts of its `tool_utils.py` copied verbatim (Apache-2.0); a
function turn fills the template's function slot and a tool result its observation slot, both the
assistant and user slots unless the template has its own.

LLaMA-Factory's `efficient_eos` templates (glm4, gemma2) leave the eos out of the answer's text:
`Layout.efficient_eos` says so, and the labelling (`kubetune.trainer.data.tokenize`) puts LLaMA-Factory's
eos label where the next turn starts, and after the last answer.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, replace


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
    # A tool-call turn (LLaMA-Factory's format_function; None: the assistant slot) and a tool result
    # (format_observation; None: the user slot).
    function: str | None = None
    observation: str | None = None
    # A key of TOOL_FORMATS: how the tools list and the calls are written.
    tool_format: str = "default"
    # LLaMA-Factory's efficient_eos: no eos in the text; the token after each trained answer is labelled
    # eos (the next turn's first token, or an eos appended after the last answer).
    efficient_eos: bool = False
    # LLaMA-Factory's other stop words: generation stops on them too (they start the next turn).
    more_stops: tuple[str, ...] = ()


_CHATML_USER = "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
_CHATML_ASSISTANT = "{content}<|im_end|>\n"
_CHATML_SYSTEM = "<|im_start|>system\n{content}<|im_end|>\n"
_CHATML = Layout(user=_CHATML_USER, assistant=_CHATML_ASSISTANT, system=_CHATML_SYSTEM, stop="<|im_end|>")
_TOOL_RESPONSE = "<|im_start|>user\n<tool_response>\n{content}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
_QWEN = replace(_CHATML, observation=_TOOL_RESPONSE, tool_format="qwen")
_QWEN_THINKING = replace(_QWEN, empty_thought=True)
_GEMMA = Layout(
    user="<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n",
    assistant="{content}<end_of_turn>\n",
    system="{content}\n\n",
    prefix="{bos}",
    stop="<end_of_turn>",
    system_in_first_user=True,
    observation="<start_of_turn>tool\n{content}<end_of_turn>\n<start_of_turn>model\n",
)
_GLM4 = Layout(
    user="<|user|>\n{content}<|assistant|>",
    assistant="\n{content}",
    system="<|system|>\n{content}",
    prefix="[gMASK]<sop>",
    function="{content}",
    observation="<|observation|>\n{content}<|assistant|>",
    tool_format="glm4",
    efficient_eos=True,
    more_stops=("<|user|>", "<|observation|>"),
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
    "chatml": replace(_CHATML, observation="<|im_start|>tool\n{content}<|im_end|>\n<|im_start|>assistant\n"),
    "qwen": replace(_QWEN, default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    "qwen2_vl": replace(_QWEN, default_system="You are a helpful assistant."),
    "qwen3": _QWEN_THINKING,
    "qwen3_nothink": _QWEN,
    "qwen3_vl": _QWEN_THINKING,
    "qwen3_vl_nothink": _QWEN,
    "qwen3_5": replace(_QWEN_THINKING, tool_format="qwen3_5"),
    "qwen3_5_nothink": replace(_QWEN, tool_format="qwen3_5"),
    "yi": _CHATML,
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
        observation="<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        tool_format="llama3",
    ),
    "llama4": Layout(
        user="<|header_start|>user<|header_end|>\n\n{content}<|eot|><|header_start|>assistant<|header_end|>\n\n",
        assistant="{content}<|eot|>",
        system="<|header_start|>system<|header_end|>\n\n{content}<|eot|>",
        prefix="{bos}",
        stop="<|eot|>",
        observation="<|header_start|>ipython<|header_end|>\n\n{content}<|eot|><|header_start|>assistant<|header_end|>\n\n",
        tool_format="llama3",
    ),
    "mistral": Layout(
        user="[INST] {content}[/INST]",
        assistant=" {content}{eos}",
        system="{content}\n\n",
        prefix="{bos}",
        system_in_first_user=True,
        function="[TOOL_CALLS] {content}{eos}",
        observation='[TOOL_RESULTS] {"content": {content}}[/TOOL_RESULTS]',
        tool_format="mistral",
    ),
    "mistral_small": Layout(
        user="[INST]{content}[/INST]",
        system="[SYSTEM_PROMPT]{content}[/SYSTEM_PROMPT]",
        prefix="{bos}",
        function="[TOOL_CALLS]{content}{eos}",
        observation='[TOOL_RESULTS]{"content": {content}}[/TOOL_RESULTS]',
        tool_format="mistral",
    ),
    "gemma": _GEMMA,
    "gemma2": replace(_GEMMA, stop="eos", efficient_eos=True, more_stops=("<end_of_turn>",)),
    "gemma3": _GEMMA,
    "glm4": _GLM4,
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
        tool_format="phi4_mini",
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


def _fill(prompt: str, **fields: str) -> str:
    """A `str.format` prompt of LLaMA-Factory's as a jinja expression, each field given as one."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(prompt):
        if literal:
            parts.append(repr(literal))
        if field is not None:
            parts.append(f"({fields[field]})")
    return " + ".join(parts)


# LLaMA-Factory 0.9.5's tool_utils.py prompts, verbatim.
DEFAULT_TOOL_PROMPT = (
    "You have access to the following tools:\n{tool_text}"
    "Use the following format if using a tool:\n"
    "```\n"
    "Action: tool name (one of [{tool_names}])\n"
    "Action Input: the input to the tool, in a JSON format representing the kwargs "
    """(e.g. ```{{"input": "hello world", "num_beams": 5}}```)\n"""
    "```\n"
)
LLAMA3_TOOL_PROMPT = (
    "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
    "You have access to the following functions. To call a function, please respond with JSON for a function call. "
    """Respond in the format {{"name": function name, "parameters": dictionary of argument name and its value}}. """
    "Do not use variables.\n\n{tool_text}"
)
GLM4_TOOL_PROMPT = (
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具{tool_text}"
)
QWEN_TOOL_PROMPT = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tool_text}"
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    """<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, """
    """"arguments": <args-json-object>}}\n</tool_call>"""
)
QWEN35_TOOL_PROMPT = (
    "\n\n# Tools\n\nYou have access to the following functions:\n\n<tools>{tool_text}"
    "\n</tools>\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n"
    "</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n"
    "- Function calls MUST follow the specified format: "
    "an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags\n"
    "- Required parameters MUST be specified\n"
    "- You may provide optional reasoning for your function call in natural language "
    "BEFORE the function call, but NOT after\n"
    "- If there is no function call available, answer the question like normal with your current knowledge "
    "and do not tell the user about function calls\n</IMPORTANT>"
)

# Jinja pieces. `t` is one entry of `tools`; `f` one call's {"name", "arguments"}; `tt` gathers the
# tools text (and names), `cc` the calls text.
_WRAPPED = "(t if t.get('type') == 'function' else {'type': 'function', 'function': t})"
_UNWRAPPED = "(t.get('function', '') if t.get('type') == 'function' else t)"
_DEFAULT_TOOL = (
    f"{{%- set t = {_UNWRAPPED} -%}}{{%- set args = namespace(text='') -%}}"
    "{%- for name, p in t['parameters']['properties'].items() -%}"
    "{%- set args.text = args.text + '  - ' + name + ' (' + (p.get('type', '') | string)"
    " + (', required' if name in t['parameters'].get('required', []) else '') + '): '"
    " + (p.get('description', '') | string)"
    " + ((', should be one of [' + p['enum'] | join(', ') + ']') if p.get('enum', None) else '')"
    " + ((', where each item should be ' + (p['items'].get('type', '') | string)) if p.get('items', None) else '')"
    " + '\\n' -%}"
    "{%- endfor -%}"
    "{%- set tt.text = tt.text + '> Tool Name: ' + t['name'] + '\\nTool Description: '"
    " + (t.get('description', '') | string) + '\\nTool Args:\\n' + args.text + '\\n' -%}"
    "{%- set tt.names = tt.names + [t['name']] -%}"
)


@dataclass(frozen=True)
class ToolFormat:
    """How a template writes the tools (`each_tool` adds one tool `t` to `tt.text`, then `prompt` is the
    text) and the calls of a function turn (`each_call` adds one call `f` to `cc.text`, after `cc.sep`)."""

    each_tool: str
    prompt: str
    each_call: str
    # Set once after the calls: for formats that write the calls as one JSON value.
    calls: str = ""


_DEFAULT_CALL = (
    "{%- set cc.text = cc.text + cc.sep + 'Action: ' + f['name'] + '\\nAction Input: ' + (f['arguments'] | tojson) -%}"
)
TOOL_FORMATS: dict[str, ToolFormat] = {
    "default": ToolFormat(
        each_tool=_DEFAULT_TOOL,
        prompt=_fill(DEFAULT_TOOL_PROMPT, tool_text="tt.text", tool_names="tt.names | join(', ')"),
        each_call=_DEFAULT_CALL,
    ),
    "qwen": ToolFormat(
        each_tool=f"{{%- set tt.text = tt.text + '\\n' + ({_WRAPPED} | tojson) -%}}",
        prompt=_fill(QWEN_TOOL_PROMPT, tool_text="tt.text"),
        each_call="{%- set cc.text = cc.text + cc.sep + '<tool_call>\\n'"
        " + ({'name': f['name'], 'arguments': f['arguments']} | tojson) + '\\n</tool_call>' -%}",
    ),
    "qwen3_5": ToolFormat(
        each_tool="{%- set t = (t.get('function', t) if t.get('type') == 'function' else t) -%}"
        "{%- set tt.text = tt.text + '\\n' + (t | tojson) -%}",
        prompt=_fill(QWEN35_TOOL_PROMPT, tool_text="tt.text"),
        each_call="{%- set cc.text = cc.text + cc.sep + '<tool_call>\\n<function=' + f['name'] + '>' -%}"
        "{%- for key, value in f['arguments'].items() -%}"
        "{%- set cc.text = cc.text + '\\n<parameter=' + key + '>\\n'"
        " + (value if value is string else value | tojson) + '\\n</parameter>' -%}"
        "{%- endfor -%}{%- set cc.text = cc.text + '\\n</function>\\n</tool_call>' -%}",
    ),
    "llama3": ToolFormat(
        each_tool=f"{{%- set tt.text = tt.text + ({_WRAPPED} | tojson(indent=4)) + '\\n\\n' -%}}",
        # LLaMA-Factory writes the day it preprocesses; `date_string` (as in Llama 3.1's own template) fixes it.
        prompt=_fill(
            LLAMA3_TOOL_PROMPT,
            date="date_string if date_string is defined else strftime_now('%d %b %Y')",
            tool_text="tt.text",
        ),
        each_call="{%- set cc.items = cc.items + [{'name': f['name'], 'parameters': f['arguments']}] -%}",
        calls="{%- set cc.text = (cc.items[0] if cc.items | length == 1 else cc.items) | tojson -%}",
    ),
    "mistral": ToolFormat(
        each_tool=f"{{%- set tt.items = tt.items + [{_WRAPPED}] -%}}",
        prompt="'[AVAILABLE_TOOLS] ' + (tt.items | tojson) + '[/AVAILABLE_TOOLS]'",
        each_call="{%- set cc.items = cc.items + [{'name': f['name'], 'arguments': f['arguments']}] -%}",
        calls="{%- set cc.text = cc.items | tojson -%}",
    ),
    # GLM-4 writes one call as its name and arguments on two lines, and refuses parallel calls.
    "glm4": ToolFormat(
        each_tool=f"{{%- set t = {_UNWRAPPED} -%}}"
        "{%- set tt.text = tt.text + '\\n\\n## ' + t['name'] + '\\n\\n' + (t | tojson(indent=4))"
        " + '\\n在调用上述函数时，请使用 Json 格式表示调用的参数。' -%}",
        prompt=_fill(GLM4_TOOL_PROMPT, tool_text="tt.text"),
        each_call="{%- set cc.items = cc.items + [f] -%}",
        calls="{%- if cc.items | length > 1 -%}{{ raise_exception('GLM-4 does not support parallel functions.') }}"
        "{%- endif -%}{%- set cc.text = cc.items[0]['name'] + '\\n' + (cc.items[0]['arguments'] | tojson) -%}",
    ),
    # phi4_mini's format_tools is a plain slot around the tools column's JSON; its calls are the default's.
    "phi4_mini": ToolFormat(
        each_tool="", prompt="'<|tool|>' + (tools | tojson) + '<|/tool|>'", each_call=_DEFAULT_CALL
    ),
}


def _tools_jinja(fmt: ToolFormat) -> str:
    """Sets ns.tools to the tool prompt when there are tools."""
    return (
        "{%- if tools -%}{%- set tt = namespace(text='', names=[], items=[]) -%}"
        f"{{%- for t in tools -%}}{fmt.each_tool}{{%- endfor -%}}"
        f"{{%- set ns.tools = {fmt.prompt} -%}}{{%- endif -%}}"
    )


def _calls_jinja(fmt: ToolFormat) -> str:
    """Sets cc.text to the calls of message `m` (OpenAI `tool_calls`, or bare {"name", "arguments"})."""
    return (
        "{%- set cc = namespace(text='', sep='', items=[]) -%}"
        "{%- for c in m['tool_calls'] -%}{%- set f = c['function'] if c['function'] is defined else c -%}"
        f"{fmt.each_call}{{%- set cc.sep = '\\n' -%}}{{%- endfor -%}}{fmt.calls}"
    )


def layout_jinja(name: str, layout: Layout) -> str:
    """The chat template (single-line jinja, so whitespace control never matters)."""
    del name  # every template renders every conversation; kept for callers that name it
    fmt = TOOL_FORMATS[layout.tool_format]
    system = _expr(layout.system, "(ns.sys + ns.tools)")
    content = "m['content']"
    if layout.empty_thought:
        content = (
            f"(('' if '<think>' in m['content'] or '</think>' in m['content'] else {EMPTY_THOUGHT!r}) + m['content'])"
        )
    answer = _expr(layout.assistant, content)
    function = _expr(layout.function or layout.assistant, f"({content} + cc.text)")
    question = "m['content']"
    if layout.system_in_first_user:
        question = f"(({system}) if loop.first and (ns.sys or ns.tools) else '') + m['content']"
    observation = _expr(layout.observation or layout.user, "m['content']")
    return (
        "{%- set bos = bos_token if bos_token is defined and bos_token else '' -%}"
        f"{{%- set ns = namespace(sys={layout.default_system!r}, tools='') -%}}"
        "{%- if messages and messages[0]['role'] == 'system' and messages[0]['content'] -%}"
        "{%- set ns.sys = messages[0]['content'] -%}{%- endif -%}"
        + _tools_jinja(fmt)
        + (f"{{{{ {_expr(layout.prefix, '')} }}}}" if layout.prefix else "")
        + ("" if layout.system_in_first_user else f"{{%- if ns.sys or ns.tools -%}}{{{{ {system} }}}}{{%- endif -%}}")
        + "{%- for m in messages if m['role'] != 'system' -%}"
        "{%- if m['role'] == 'assistant' and m['tool_calls'] is defined and m['tool_calls'] -%}"
        f"{_calls_jinja(fmt)}{{{{ {function} }}}}"
        f"{{%- elif m['role'] == 'assistant' -%}}{{{{ {answer} }}}}"
        f"{{%- elif m['role'] == 'tool' -%}}{{{{ {observation} }}}}"
        f"{{%- else -%}}{{{{ {_expr(layout.user, question)} }}}}{{%- endif -%}}"
        "{%- endfor -%}"
    )
