#!/usr/bin/env python3
"""Renders each case's Jinja chat template as transformers' apply_chat_template does (a sandboxed
jinja2 environment with trim_blocks and lstrip_blocks) and compares it with what Switchyard
renders. Usage: chat_template_jinja.py CASES.json. Exit 0: all equal; 1: a difference (printed);
77: no jinja2 here (the test skips)."""
import json
import sys

try:
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError:
    print("jinja2 is not installed (apt-get install python3-jinja2)")
    sys.exit(77)

environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
failed = False
with open(sys.argv[1], encoding="utf-8") as cases:
    for case in json.load(cases):
        template = environment.from_string(case["template"])
        for generation, expected in ((False, case["expected"]), (True, None)):
            if generation:
                messages, expected = case["prompt_messages"], case["prompt_expected"]
            else:
                messages = case["messages"]
            got = template.render(messages=messages, add_generation_prompt=generation,
                                  eos_token=case["eos_token"], bos_token="<s>")
            if got != expected:
                failed = True
                print(f"{case['name']} (add_generation_prompt={generation}):\n"
                      f"  jinja:      {got!r}\n  switchyard: {expected!r}")
sys.exit(1 if failed else 0)
