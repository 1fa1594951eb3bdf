"""The shape of the house, read from the code with `ast`: the core stands alone, the layers lean on it, nothing
goes round in a circle; and the seams the layers fill in (gpt/layers.py) are found through the package's metadata.

Floors:
    core     the modules of gpt/ itself: text → tokens → batches → model → loss → optimizer → checkpoint → sampling
    layers   gpt/post (post-training), gpt/serve (the server), gpt/lab (the lab): each imports the core; the server
             and the lab may use post-training (the chat template, the task suite), never each other
Every import counts, at the top of a module or inside a function, except those under `if __name__ == "__main__":`,
which run only when the file is the program (the command lines kept where they were: python -m gpt.lora, ...),
and those under `if TYPE_CHECKING:`, which never run (type names for annotations).
"""

from __future__ import annotations

import ast
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from gpt import layers

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "gpt"
LAYERS = ("gpt.post", "gpt.serve", "gpt.lab")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def never_imported(node: ast.AST) -> bool:
    """`if __name__ == "__main__":` (runs only when the file is the program) or `if TYPE_CHECKING:` (never runs)."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"


def imported_modules(name: str) -> set[str]:
    """The gpt modules that module `name` imports (a `from gpt.x import y` of a submodule y counts as gpt.x.y)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if never_imported(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.split(".")[0] == "gpt")
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] != "gpt":
                    continue
                for alias in child.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(name)
    return {m for m in found if m in MODULES}


GRAPH = {name: imported_modules(name) for name in MODULES}


def floor(name: str) -> str:
    for layer in LAYERS:
        if name == layer or name.startswith(layer + "."):
            return layer
    return "core"


def test_the_core_imports_no_layer():
    wrong = sorted(f"{a} imports {b}" for a, targets in GRAPH.items() if floor(a) == "core" and a != "gpt"
                   for b in targets if floor(b) != "core")
    assert not wrong, "the core must not import a layer (give it a seam in gpt/layers.py instead):\n" + "\n".join(wrong)


def test_layers_lean_on_the_core_and_post_training_only():
    allowed = {"gpt.post": {"core", "gpt.post"}, "gpt.serve": {"core", "gpt.post", "gpt.serve"},
               "gpt.lab": {"core", "gpt.post", "gpt.lab"}}
    wrong = sorted(f"{a} imports {b}" for a, targets in GRAPH.items() if floor(a) != "core"
                   for b in targets if floor(b) not in allowed[floor(a)])
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    # Tarjan's strongly connected components: any component of more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            connect(v)
    assert not circles, f"import circles: {circles}"


def test_the_checker_sees_imports_inside_functions_and_skips_main_blocks(tmp_path):
    # The test above must be able to fail: a function-level import is an edge; a __main__ block's is not.
    assert "gpt.post.adapter_files" in GRAPH["gpt.post"]  # imported inside register()
    assert GRAPH["gpt.lora"] == set() and GRAPH["gpt.tasks"] == set()  # command lines only


def test_no_private_name_is_imported_across_modules():
    wrong = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gpt"):
                wrong += [f"{name}: from {node.module} import {a.name}" for a in node.names if a.name.startswith("_")]
    assert not wrong, "\n".join(wrong)


def test_no_function_is_longer_than_a_page():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, "\n".join(long)


def test_the_post_training_layer_is_announced_and_registers_its_seams():
    announced = {entry.value for entry in entry_points(group=layers.GROUP)}
    assert "gpt.post:register" in announced, "reinstall the project (pip install -e .): its metadata lacks the layer"
    assert {kind.name for kind in layers.data_kinds()} == {"conversations", "pairs", "prompts"}
    assert [a.key for a in layers.adaptations()] == ["adapter"]
    assert layers.on_load_hooks()


@pytest.mark.parametrize("line, kind", [
    ({"text": "plain"}, "text"),
    ({"prompt": "p", "response": "r"}, "conversations"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "conversations"),
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, "pairs"),
    ({"messages": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}, "pairs"),
])
def test_one_detector_recognises_every_kind_of_jsonl(tmp_path, line, kind):
    import json

    from gpt.datasets import jsonl_kind

    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    assert jsonl_kind([path]) == kind
