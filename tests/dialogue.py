"""What several test modules share: one multi-turn conversation, ChatML as a policy renders it, the examples.

Importable from every test module (the root conftest's folder is on the path).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

HISTORY = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And times three?"},
]
RESPONSE = "Twelve."
#: ChatML as a Jinja chat template (SmolLM2's and Qwen's, trimmed of tools)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def chatml(messages: list[dict], generation: bool = True) -> str:
    """`messages` as a ChatML policy's tokenizer renders them (with the assistant's generation prompt)."""
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + ("<|im_start|>assistant\n" if generation else "")


def load_example(name: str) -> ModuleType:
    """examples/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
