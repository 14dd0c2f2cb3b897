"""The packages' layering, read from the source with ast: model/ is the network alone and imports
nothing of train/, eval/ or optim/; the modules of train/ import one another without a cycle.
Imports inside functions count too: a deferred import hides a cycle, it does not break it. Imports
under `if TYPE_CHECKING:` do not: they never run, and only name a type for an annotation."""

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it, by its dotted name (`from train import data`
    gives train.data as well as train)."""
    modules = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def _runtime_nodes(node: ast.AST):
    """Every node below `node` except the bodies of `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
            yield from (n for stmt in child.orelse for n in (stmt, *_runtime_nodes(stmt)))
            continue
        yield child
        yield from _runtime_nodes(child)


def package_graph(package: str) -> dict[str, set[str]]:
    """{module of the package: the modules of the same package it imports}."""
    paths = {f"{package}.{path.stem}": path for path in (ROOT / package).glob("*.py") if path.stem != "__init__"}
    return {name: imported_modules(path) & (paths.keys() - {name}) for name, path in paths.items()}


def test_the_model_package_imports_nothing_of_train_eval_or_optim():
    upward = {
        f"model/{path.name}": sorted(m for m in imported_modules(path) if m.split(".")[0] in {"train", "eval", "optim"})
        for path in (ROOT / "model").glob("*.py")
    }
    assert {name: found for name, found in upward.items() if found} == {}


def test_the_modules_of_train_import_one_another_without_a_cycle():
    graph = package_graph("train")
    assert {"train.data", "train.shards", "train.corpus"} <= graph.keys()
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as err:
        raise AssertionError(f"an import cycle within train/: {' -> '.join(err.args[1])}") from None


def test_the_shard_format_is_a_leaf_below_the_loader_and_the_corpus_builder():
    graph = package_graph("train")
    assert "train.shards" in graph["train.data"] and "train.shards" in graph["train.corpus"]
    assert graph["train.shards"] <= {"train.files", "train.fetch", "train.tokenizer"}


def test_no_module_of_train_imports_eval_so_the_packages_have_no_cycle():
    # eval reads what train writes (runs, metrics, checkpoints); train must never need eval back
    upward = {
        f"train/{path.name}": sorted(m for m in imported_modules(path) if m.split(".")[0] == "eval")
        for path in (ROOT / "train").glob("*.py")
    }
    assert {name: found for name, found in upward.items() if found} == {}


def test_optim_imports_nothing_of_the_harness_but_in_its_check_command():
    # optim/check.py drives the harness (configs, a small GPT) from above; the optimizers stand alone
    upward = {
        f"optim/{path.name}": sorted(m for m in imported_modules(path) if m.split(".")[0] in {"train", "eval", "model"})
        for path in (ROOT / "optim").glob("*.py")
        if path.name != "check.py"
    }
    assert {name: found for name, found in upward.items() if found} == {}


def test_no_function_of_train_is_over_60_lines_or_takes_over_6_required_arguments():
    # the loop's promise (docs/design.md): each concern small enough to read on one screen
    too_big = []
    for path in sorted((ROOT / "train").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            arguments = node.args
            positional = [*arguments.posonlyargs, *arguments.args]
            required = len(positional) - len(arguments.defaults) + sum(d is None for d in arguments.kw_defaults)
            required -= bool(positional) and positional[0].arg in ("self", "cls")
            if node.end_lineno - node.lineno + 1 > 60 or required > 6:
                too_big.append(f"train/{path.name}:{node.lineno} {node.name}")
    assert too_big == []
