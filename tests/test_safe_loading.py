"""Every ``torch.load`` in the repository reads with ``weights_only=True``: a weights file must never run code."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def unsafe_loads(text: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("torch.load"):
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True for k in node.keywords)
            if not safe:
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_every_torch_load_is_weights_only():
    sources = [p for folder in ("harness", "plugins", "scripts", "examples", "tests") for p in (REPO / folder).rglob("*.py")]
    problems = [line for path in sources for line in unsafe_loads(path.read_text(), str(path.relative_to(REPO)))]
    assert problems == [], "\n".join(problems)


def test_the_check_catches_a_plain_load():
    assert unsafe_loads("import torch\ntorch.load('m.pt', map_location='cpu')\n", "x.py") == ["x.py:2: torch.load('m.pt', map_location='cpu')"]
    assert unsafe_loads("torch.load(p, weights_only=False)\n", "x.py") and not unsafe_loads("torch.load(p, weights_only=True)\n", "x.py")
