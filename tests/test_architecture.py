"""The house rules, kept by a test: every module has a place in the data flow and imports only
modules below it (so there is no import cycle, not even through an import inside a function),
no function outgrows a screen or two, and nothing writes to other libraries' private parts."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cyclegan"

# The data flow, lowest first (docs/architecture.md draws it): a module may import only modules
# of a lower layer. Files -> data -> networks -> config -> step and checkpoints -> loop ->
# inference -> commands.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("runtime", "runlock", "utils", "zoo"),
    ("images", "fetch"),
    ("science",),  # scientific images: full-precision reading and writing, beside images
    ("datasets", "models", "losses", "distributed", "measures"),
    ("paired",),  # pix2pix pairs: built on datasets (its layouts, transforms, sample seeds)
    ("modelkit",),  # the Model interface and the step pieces the models share
    ("cyclegan_model", "cut_model", "pix2pix_model"),  # one module per model family
    ("registry",),  # --model name -> model object: the only place a model's name is compared
    ("__init__",),
    ("options",),
    ("step", "checkpoint", "logger"),
    ("memory", "loader", "resume", "report", "scoring"),
    ("perf",),
    ("train", "inference"),
    ("translate", "evaluate", "export", "serve", "demo", "download"),
    ("cli",),
    ("__main__",),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
LONGEST_FUNCTION = 80
FLAT_DECLARATIONS = {"get_args_parser"}  # argument parsers: one add_argument after another


def modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), filename=str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def imported(tree: ast.AST, top_level_only: bool = False) -> set[str]:
    """The package's modules that ``tree`` imports (names defined in ``cyclegan/__init__.py``
    count as ``__init__``)."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "cyclegan":
            names = [f"cyclegan.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "cyclegan":
                module = parts[1] if len(parts) > 1 else "__init__"
                found.add(module if (PACKAGE / f"{module}.py").is_file() else "__init__")
    return found


def test_every_module_has_a_place_in_the_layers():
    assert sorted(modules()) == sorted(RANK), "add new modules to LAYERS (and docs/architecture.md)"


def test_modules_import_only_from_lower_layers():
    wrong = [f"{name} (layer {RANK[name]}) imports {other} (layer {RANK[other]})"
             for name, tree in modules().items() for other in sorted(imported(tree))
             if other != name and RANK[other] >= RANK[name]]
    assert not wrong, "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module-level", "with-function-level"])
def test_no_import_cycles(top_level_only):
    graph = {name: imported(tree, top_level_only) - {name} for name, tree in modules().items()}
    graph["__init__"] -= {"__init__"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_function_is_longer_than_two_screens():
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for name, tree in modules().items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in FLAT_DECLARATIONS
            and node.end_lineno - node.lineno + 1 > LONGEST_FUNCTION]
    assert not long, "\n".join(long)


def private_writes(tree: ast.AST) -> list[str]:
    """``obj._name = ...``, ``obj._name[k] = ...``, ``obj.__class__ = ...`` (tuple targets too) and
    ``setattr(obj, "_name", ...)`` on anything but ``self`` / ``ctx`` / ``cls``."""
    def own(value: ast.AST) -> bool:
        return isinstance(value, ast.Name) and value.id in ("self", "ctx", "cls")

    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        flat: list[ast.AST] = []
        while targets:
            target = targets.pop()
            if isinstance(target, (ast.Tuple, ast.List)):
                targets += target.elts
            else:
                flat.append(target.value if isinstance(target, ast.Subscript) else target)
        found += [f"{node.lineno}: {ast.unparse(t)}" for t in flat
                  if isinstance(t, ast.Attribute) and t.attr.startswith("_") and not own(t.value)]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                and str(node.args[1].value).startswith("_") and not own(node.args[0])):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_writes_to_private_attributes_of_other_objects():
    found = [f"{name}.py:{where}" for name, tree in modules().items() for where in private_writes(tree)]
    assert not found, "\n".join(found)


def test_the_private_write_finder_finds_them():
    code = ("a._x = 1\nb._m['k'] = 2\nc.__class__ = D\nd, e._y = 1, 2\nsetattr(f, '_z', 3)\n"
            "self._ok = 1\ng.public = 1\nsetattr(h, 'public', 1)\n")
    assert [w.split(":")[0] for w in private_writes(ast.parse(code))] == ["1", "2", "3", "4", "5"]


def test_imports_are_absolute():
    relative = [f"{name}.py:{node.lineno}" for name, tree in modules().items() for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level > 0]
    assert not relative, "relative imports escape the layer check: " + ", ".join(relative)


def test_docstrings_quote_no_benchmark_figures():
    """Measured speed-ups go stale with the machine: they belong in docs/benchmarks.md."""
    figure = re.compile(r"\b\d+(\.\d+)?x (as fast|faster)|\b\d+% faster|on this project's .*CPU")
    found = [f"{name}: {ast.get_docstring(node)[:60]!r}" for name, tree in modules().items()
             for node in ast.walk(tree)
             if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
             and ast.get_docstring(node) and figure.search(ast.get_docstring(node))]
    assert not found, "\n".join(found)


def model_name_comparisons(tree: ast.AST, names: set[str]) -> list[int]:
    """Lines that compare (``==``, ``!=``, ``in``, ``not in``) a model's name: ``config.model`` or
    a ``model`` variable with anything, or a ``--model`` name (alone or in a tuple, list or set)
    with an expression that reads a model (``saved.get("model", ...)``). Other uses of the same
    words (the zoo's "cyclegan" and "pix2pix" families of downloads) are not model names."""
    def is_name(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(is_name(e) for e in node.elts)

    def reads_model(node: ast.AST) -> bool:
        return any((isinstance(n, ast.Attribute) and n.attr == "model") or (isinstance(n, ast.Name) and n.id == "model")
                   or (isinstance(n, ast.Constant) and n.value == "model") for n in ast.walk(node))

    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Compare) and all(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn))
                                                      for op in node.ops)):
            continue
        operands = (node.left, *node.comparators)
        direct = any(isinstance(x, ast.Attribute) and x.attr == "model" or isinstance(x, ast.Name) and x.id == "model"
                     for x in operands)
        if direct or (any(is_name(x) for x in operands) and any(reads_model(x) for x in operands)):
            found.append(node.lineno)
    return found


def test_a_model_name_is_compared_only_in_the_registry():
    """What a model does is asked of its object (registry.get_model): no module branches on
    ``config.model == "cyclegan"``, which would send every other model down one path."""
    from cyclegan.registry import MODELS

    found = [f"{name}.py:{line}" for name, tree in modules().items() if name != "registry"
             for line in model_name_comparisons(tree, set(MODELS))]
    assert not found, "compare model names in registry.py only (ask the model object instead): " + ", ".join(found)


def test_the_model_name_rule_sees_comparisons():
    tree = ast.parse('if config.model == "x": pass\nif s.get("model") in ("a", "cut"): pass\n'
                     'if y == "other": pass\nif family == "cut": pass\nif model != m: pass\n')
    assert model_name_comparisons(tree, {"cut"}) == [1, 2, 5]
