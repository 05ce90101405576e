"""The package's structure: no import cycle, no private name used across modules, the loop names
no mode, and modes register where they are defined (issue 28)."""

from __future__ import annotations

import ast
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "jarn_tf")


def _modules():
    """{dotted name: path} of every module of the package."""
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, REPO)[: -len(".py")].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


def _imports(path, modules):
    """(module-level imports, every import) of the package's modules by one module.

    Module-level imports are those that run at import time (not inside a function or a
    ``TYPE_CHECKING`` block): the ones that make an import cycle.
    """
    tree = ast.parse(open(path).read())
    top, every = set(), set()

    def add(target, name, at_top):
        for candidate in (f"{target}.{name}" if name else None, target):
            if candidate in modules:
                every.add(candidate)
                if at_top:
                    top.add(candidate)
                return

    def visit(node, at_top):
        for child in ast.iter_child_nodes(node):
            inner = at_top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                inner = False
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, None, inner)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    add(child.module, alias.name, inner)
            visit(child, inner)

    visit(tree, True)
    return top, every


def test_no_module_imports_in_a_cycle():
    modules = _modules()
    graph = {name: _imports(path, modules)[0] for name, path in modules.items()}
    # A package's __init__ imports its submodules, which import the package: not a cycle of
    # concern (Python resolves it), so edges from a module to the package that holds it are dropped.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    cycles = []
    state = {}

    def walk(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node, [])
    assert not cycles, "import cycles (module-level imports): " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_name_is_used_across_modules():
    modules = _modules()
    found = []
    for name, path in modules.items():
        tree = ast.parse(open(path).read())
        aliases = {}  # local name -> package module it refers to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in modules:
                        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                    elif node.module in modules and alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{name}: from {node.module} import {alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and aliases[node.value.id] != name
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(f"{name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not found, "private names used across modules: " + "; ".join(found)


def test_the_training_loop_names_no_mode():
    from jarn_tf import config as config_lib

    source = open(os.path.join(PACKAGE, "core", "loop.py")).read()
    code = ast.unparse(ast.parse(source))  # without comments
    names = "|".join(re.escape(m) for m in config_lib.MODE_SECTIONS)
    assert not re.search(rf"['\"]({names})['\"]", code)
    assert "config.mode ==" not in code


def test_modes_register_once_with_a_section_and_a_trainer():
    from jarn_tf import config as config_lib
    from jarn_tf.core import trainer as trainer_lib

    assert set(config_lib.MODE_SECTIONS) == set(trainer_lib.register_all_modes())
    with pytest.raises(ValueError, match="registered twice"):
        config_lib.register_mode("gan")(type("Other", (), {}))
    with pytest.raises(ValueError, match="two trainers"):
        trainer_lib.register_trainer("gan")(type("Other", (), {}))
    assert config_lib.MODE_SECTIONS["gan"] is config_lib.GANConfig
    assert trainer_lib.TRAINERS["gan"].__name__ == "GANTrainer"
    with pytest.raises(ValueError, match="is not available; choose one of"):
        trainer_lib.trainer_class("nope")


# The commands of the flat layout, before the subpackages (issue 28): module -> where its code lives.
OLD_COMMANDS = {
    "train": "jarn_tf.train",
    "evaluate": "jarn_tf.evaluate",
    "evaluate_gan": "jarn_tf.evaluate_gan",
    "paper": "jarn_tf.reproduce.paper",
    "dirac_gan": "jarn_tf.gan.dirac",
    "gan_study": "jarn_tf.gan.study",
    "gan_table": "jarn_tf.gan.table",
    "robgan_study": "jarn_tf.robgan.study",
    "bench": "jarn_tf.bench.training",
    "bench_attacks": "jarn_tf.bench.attacks",
    "bench_gan": "jarn_tf.bench.gan",
    "official_autoattack": "jarn_tf.robustness.official_autoattack",
    "bench_flops": "jarn_tf.bench.flops",
}


@pytest.mark.parametrize("old", sorted(OLD_COMMANDS))
def test_every_command_of_the_flat_layout_still_runs_its_code(old):
    """``python -m jarn_tf.<old>`` still exists and runs the module that holds the code now as
    ``__main__`` (checked on the source, without importing TensorFlow)."""
    modules = _modules()
    new = OLD_COMMANDS[old]
    assert 'if __name__ == "__main__":' in open(modules[new]).read()
    if new == f"jarn_tf.{old}":
        return
    shim = modules.get(f"jarn_tf.{old}.__main__") or modules[f"jarn_tf.{old}"]
    tree = ast.parse(open(shim).read())
    calls = [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "runpy.run_module"
    ]
    assert [ast.unparse(c) for c in calls] == [f"runpy.run_module('{new}', run_name='__main__', alter_sys=True)"]
    assert new in ast.get_docstring(tree)
