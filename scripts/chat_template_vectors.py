#!/usr/bin/env python3
"""Renders real chat templates with transformers' apply_chat_template machinery, so that the Swift
tests compare byte for byte without Python.

    pip install transformers
    python3 scripts/chat_template_vectors.py     # writes fixtures/chat-templates/vectors.json

Templates: every file in ../shared/data/chat-templates plus the demo model's. Conversations: a
single turn, a system prompt, several turns, tool definitions, tool calls with tool results, and
reasoning content; with and without the generation prompt; extra keyword arguments where the
template reads them. strftime_now is pinned to FIXED_TIME (the Swift side pins the same).
"""
import datetime
import glob
import json
import os

from transformers.utils import chat_template_utils as ctu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXED_TIME = 1785000000  # 2026-07-25 (UTC)

# Short templates of other families the engine serves, in their published form.
EXTRA_TEMPLATES = {
    "llama-2-chat": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
        "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
        "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"),
    "mistral-instruct-v0.1": (
        "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
        "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"),
    "phi-3.5-moe": (
        "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
        "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
        "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
        "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"),
    "olmoe-tulu": (
        "{{ bos_token }}{% for message in messages %}\n{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] }}"
        "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] }}"
        "{% elif message['role'] == 'assistant' %}{% if not loop.last %}{{ '<|assistant|>\n'  + message['content'] + eos_token }}"
        "{% else %}{{ '<|assistant|>\n'  + message['content'] + eos_token }}{% endif %}{% endif %}"
        "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}{% endfor %}"),
}

SPECIAL = {
    "meta-llama-Llama-3.1-8B-Instruct": dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"),
    "Qwen-Qwen3-0.6B": dict(bos_token=None, eos_token="<|im_end|>"),
    "mistralai-Mistral-Nemo-Instruct-2407": dict(bos_token="<s>", eos_token="</s>"),
    "deepseek-ai-DeepSeek-V3.1": dict(bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>"),
    "openai-gpt-oss-120b": dict(bos_token="<|startoftext|>", eos_token="<|return|>"),
    "switchyard-kjv-moe": dict(bos_token="<s>", eos_token="</s>"),
    "llama-2-chat": dict(bos_token="<s>", eos_token="</s>"),
    "mistral-instruct-v0.1": dict(bos_token="<s>", eos_token="</s>"),
    "phi-3.5-moe": dict(bos_token="<s>", eos_token="<|endoftext|>"),
    "olmoe-tulu": dict(bos_token="", eos_token="<|endoftext|>"),
}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
CALL = {"id": "call12345", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}

CONVERSATIONS = {
    "single": dict(messages=[{"role": "user", "content": "Hello!"}]),
    "system": dict(messages=[{"role": "system", "content": "You are a terse assistant."},
                             {"role": "user", "content": "What is MoE?"}]),
    "multi_turn": dict(messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Hello! How can I help?"},
                                 {"role": "user", "content": "Tell me a joke about\n  experts ünïcödé 🦙."}]),
    "tools": dict(messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER]),
    "tool_calls": dict(messages=[{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Paris?"},
                                 {"role": "assistant", "content": "", "tool_calls": [CALL]},
                                 {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": "{\"temp\": 21}"},
                                 {"role": "assistant", "content": "It is 21 °C in Paris."},
                                 {"role": "user", "content": "Thanks"}], tools=[WEATHER]),
    "reasoning": dict(messages=[{"role": "user", "content": "2+2?"},
                                {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4"},
                                {"role": "user", "content": "And 3+3?"}]),
    "thinking_off": dict(messages=[{"role": "user", "content": "Quick answer please."}],
                         variables={"enable_thinking": False, "thinking": False, "reasoning_effort": "high"}),
}


def main():
    fixed = datetime.datetime.fromtimestamp(FIXED_TIME)
    templates = {os.path.basename(p)[:-len(".jinja")]: open(p, encoding="utf-8").read()
                 for p in sorted(glob.glob(os.path.join(ROOT, "..", "shared", "data", "chat-templates", "*.jinja")))}
    templates.update(EXTRA_TEMPLATES)
    demo = os.path.join(ROOT, "models", "switchyard-kjv-moe", "tokenizer_config.json")
    if os.path.exists(demo):
        templates["switchyard-kjv-moe"] = json.load(open(demo))["chat_template"]
    cases = []
    for name, source in templates.items():
        compiled = ctu._compile_jinja_template(source)
        compiled.environment.globals["strftime_now"] = lambda fmt: fixed.strftime(fmt)
        for conversation, spec in CONVERSATIONS.items():
            for generation_prompt in (True, False):
                variables = dict(SPECIAL[name])
                variables.update(spec.get("variables", {}))
                case = dict(template=name, conversation=conversation, add_generation_prompt=generation_prompt,
                            messages=spec["messages"], tools=spec.get("tools"), variables=variables)
                try:
                    case["expected"] = ctu.render_jinja_template(
                        conversations=[spec["messages"]], tools=spec.get("tools"), chat_template=source,
                        add_generation_prompt=generation_prompt, **variables)[0][0]
                except Exception as e:  # the template itself refuses (raise_exception): Swift must refuse too
                    case["error"] = f"{type(e).__name__}: {e}"
                cases.append(case)
    out = os.path.join(ROOT, "fixtures", "chat-templates")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vectors.json"), "w", encoding="utf-8") as f:
        json.dump(dict(fixed_time=FIXED_TIME, templates=templates, cases=cases), f, ensure_ascii=False, indent=1)
    print(f"{len(templates)} templates, {len(cases)} cases, {sum('error' in c for c in cases)} refused by the template")


if __name__ == "__main__":
    main()
