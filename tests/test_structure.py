"""The package's structure: no import cycle, every selector config builds its selector, no oversized module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import goracs
from goracs.__main__ import CONFIG_DIR
from goracs.selection import SelectionError, Selector, build_selector, make_selector
from goracs.selection.build import selector_settings

ROOT = Path(goracs.__file__).resolve().parent.parent
PACKAGES = ("goracs", "baselines")
MAX_LINES = 500
SELECTORS = sorted(p.stem for p in (Path(CONFIG_DIR) / "selector").glob("*.yaml"))


def _sources() -> dict[str, Path]:
    """Module name -> file, for every .py file of the packages (a package is named by its __init__.py)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(tree: ast.Module, module: str, is_pkg: bool, modules: set[str], function_level: bool) -> set[str]:
    """The package modules that `module` imports: module-level statements only, or every import statement
    (function bodies included) with function_level=True. Imports under `if TYPE_CHECKING:` never run: skipped."""
    nodes: list[ast.AST] = []

    def walk(stmts):
        for st in stmts:
            if isinstance(st, (ast.Import, ast.ImportFrom)):
                nodes.append(st)
            elif isinstance(st, ast.If) and "TYPE_CHECKING" in ast.unparse(st.test):
                continue
            elif isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if function_level or isinstance(st, ast.ClassDef):  # a class body runs at import
                    walk(st.body)
            elif isinstance(st, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for sub in getattr(st, field, []) or []:
                        walk(sub.body if isinstance(sub, ast.ExceptHandler) else [sub])

    walk(tree.body)

    def known(name: str) -> str | None:  # the longest prefix of a dotted name that is a package module
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            if ".".join(parts[:k]) in modules:
                return ".".join(parts[:k])
        return None

    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the package of this module
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            # `from pkg import name` imports the submodule pkg.name when there is one, else pkg itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            m = known(t)
            if m is not None and m != module:
                out.add(m)
    return out


def import_graph(function_level: bool = False) -> dict[str, set[str]]:
    src = _sources()
    mods = set(src)
    return {m: _imports(ast.parse(p.read_text(), str(p)), m, p.name == "__init__.py", mods, function_level)
            for m, p in src.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
    stack: list[str] = []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_the_graph_builder_sees_imports_and_cycles():
    g = import_graph(function_level=True)
    assert "goracs.selection.base" in g["baselines.random"]
    assert "goracs.selection.refine" in g["goracs.selection.label"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_the_package_modules():
    """The graph of module-level imports among the modules of goracs/ and baselines/ (parsed with ast) is acyclic.

    Edges are the import statements that run when a module is imported: module level (also inside module-level
    if/try blocks and class bodies, not under `if TYPE_CHECKING:`); imports inside functions are left out here
    (they run at call time, see the next test). `from pkg import name` counts as importing the submodule pkg.name
    when there is one, else pkg. The implicit import of a parent package's __init__ is not an edge (Python runs it
    first, so a package __init__ re-exporting its submodules is not a cycle)."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_selection_never_imports_the_baselines():
    """Selectors are found through the `_target_` of their configs, not by importing them: goracs.selection imports
    nothing from baselines, at any level, and selection and baselines together have no cycle even counting the
    imports inside functions."""
    g = import_graph(function_level=True)
    sel = {m: {t for t in deps if t.startswith(("goracs.selection", "baselines"))}
           for m, deps in g.items() if m.startswith(("goracs.selection", "baselines"))}
    bad = {m: sorted(t for t in deps if t.startswith("baselines")) for m, deps in sel.items()
           if m.startswith("goracs.selection")}
    assert not any(bad.values()), bad
    cycle = find_cycle(sel)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _jobs():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        seqrec_only = list(compose("config").get("seqrec_only_selectors") or [])
    return [(task, name) for name in SELECTORS for task in ("seqrec", "ctr")
            if task == "seqrec" or name not in seqrec_only]


@pytest.mark.parametrize("task,name", _jobs())
def test_every_selector_config_instantiates(task, name):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"task={task}", f"selector={name}"])
    got, budget, sel = build_selector(cfg.selector)
    assert got == name and budget == cfg.task.budget
    assert isinstance(sel, Selector) and callable(getattr(sel, "select", None))
    assert sel.name == name  # the name its reports carry
    assert f"{type(sel).__module__}.{type(sel).__qualname__}" == cfg.selector._target_
    # instantiate hands the constructor exactly the node's settings (the ones that key the selection)
    settings = selector_settings(cfg.selector)[2]
    plain = {k: v for k, v in vars(sel).items() if k != "name"}  # a variant's name is set on the instance
    assert "_target_" not in settings and plain == vars(type(sel)(**settings))
    assert type(make_selector(name)) is type(sel)


def test_build_selector_raises_the_selectors_own_errors():
    node = OmegaConf.load(Path(CONFIG_DIR) / "selector" / "ccs.yaml")
    node.budget = 8
    with pytest.raises(ValueError, match="beta must be in"):
        build_selector({**OmegaConf.to_container(node), "beta": 2})
    with pytest.raises(TypeError, match="unexpected keyword argument 'radius'"):
        build_selector({**OmegaConf.to_container(node), "radius": 1})
    with pytest.raises(SelectionError, match="no _target_"):
        build_selector({"name": "ccs", "budget": 8})
    with pytest.raises(SelectionError, match="cannot be imported"):
        build_selector({"_target_": "baselines.nothing.Here", "name": "x", "budget": 8})
    with pytest.raises(SelectionError, match="not a goracs.selection.base.Selector"):
        build_selector({"_target_": "collections.OrderedDict", "name": "x", "budget": 8})
    with pytest.raises(SelectionError, match="unknown selector 'gorcs'"):
        make_selector("gorcs")


def test_no_module_over_500_lines_without_a_reason():
    """Every .py file of goracs/ and baselines/ has at most 500 lines, unless one of its first five lines is a
    comment giving the reason, as `# over 500 lines: <why>` (e.g. a compiled kernel that is one function)."""
    long = {}
    for path in _sources().values():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_LINES and not any(re.match(r"\s*#.*over 500 lines:\s*\S", s) for s in lines[:5]):
            long[str(path.relative_to(ROOT))] = len(lines)
    assert not long, f"files over {MAX_LINES} lines with no stated reason: {long}"
