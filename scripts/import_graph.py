"""The project's import graph, read with ``ast``: cycles, layer violations and hidden imports.

    python scripts/import_graph.py          # the counts and any problem, exit 1 if there is one
    python scripts/import_graph.py -v       # also every hidden import with its reason

Counted as imports between the project's modules (packages ``raylhf``, ``actors``, ``rewards``):
* ``import`` / ``from ... import`` statements, at the top of a module or inside a function (``if
  TYPE_CHECKING:`` blocks are left out: they never run);
* hidden imports: a module path in a string, i.e. ``"pkg.mod:attr"`` references, the argument of
  ``importlib.import_module``, and the ``home=`` of a plugin kind's registry.
Cycles are searched among statement imports; hidden imports are listed (each with the comment that gives its
reason) and counted against a budget. The rules are docs/architecture.md's; tests/test_architecture.py runs them.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("raylhf", "actors", "rewards")
REF = re.compile(r"(?:raylhf|actors|rewards)(?:\.\w+)+(?::\w+(?:\.\w+)*)?")
# the one command table (raylhf/cli.py) maps verbs to modules in strings, so that --help stays light
COMMAND_TABLE = "raylhf.cli"
HIDDEN_BUDGET = 25
HOME_REASON = "plugin kind home: the module that ships a kind's built-ins, loaded like a plugin module on first use"

# layer of a module: the first matching prefix wins
LAYERS: list[tuple[str, str]] = [
    ("raylhf.core", "pure"), ("raylhf.algos", "pure"), ("raylhf.config", "pure"), ("raylhf.plugins", "pure"),
    ("raylhf.data", "pure"), ("raylhf.assets", "pure"), ("actors", "actors"), ("rewards", "rewards"),
    ("raylhf.driver", "driver"), ("raylhf.agent", "agent"), ("raylhf.trainers", "trainers"), ("raylhf.tools", "tools"),
    ("raylhf.demo.__main__", "cli"), ("raylhf.demo", "demo"),
    ("raylhf", "cli"),  # raylhf.cli, raylhf/__main__ and the raylhf/<verb>.py entry shims
]
# layer -> the layers it must never import
FORBIDDEN: dict[str, set[str]] = {
    "pure": {"agent", "actors", "rewards", "driver", "trainers", "tools", "demo", "cli"},
    "actors": {"agent", "driver", "trainers", "tools", "demo", "cli"},
    "rewards": {"agent", "driver", "trainers", "tools", "demo", "cli"},
    "driver": {"agent", "trainers", "tools", "demo", "cli"},
    "agent": {"trainers", "tools", "demo", "cli"},  # agent templates and tools, multi-turn episodes on the driver
    "trainers": {"tools", "demo", "cli"},
    "tools": {"trainers", "demo", "cli"},
    "demo": {"cli"},
}


@dataclass
class Import:
    source: str  # importing module
    target: str  # imported project module
    line: int
    kind: str  # "top" | "function" | "string"
    reason: str = ""  # the comment on the line or the line above (in-function and string imports)


@dataclass
class Graph:
    modules: dict[str, Path] = field(default_factory=dict)
    imports: list[Import] = field(default_factory=list)

    def hidden(self) -> list[Import]:
        return [i for i in self.imports if i.kind != "top"]

    def edges(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {m: set() for m in self.modules}
        for i in self.imports:
            if i.kind != "string":
                out[i.source].add(i.target)
        return out


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer(module: str) -> str:
    for prefix, name in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return name
    return "?"


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def _comment(lines: list[str], lineno: int) -> str:
    here = lines[lineno - 1]
    if "#" in here:
        return here.split("#", 1)[1].strip()
    above = lines[lineno - 2].strip() if lineno >= 2 else ""
    return above[1:].strip() if above.startswith("#") else ""


def _walk(tree: ast.AST) -> Iterator[tuple[ast.AST, bool, bool]]:
    """(node, inside a function, inside an ``if TYPE_CHECKING:``) for every node."""
    stack: list[tuple[ast.AST, bool, bool]] = [(tree, False, False)]
    while stack:
        node, in_fn, in_tc = stack.pop()
        yield node, in_fn, in_tc
        fn = in_fn or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        tc = in_tc or (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test))
        stack.extend((child, fn, tc) for child in ast.iter_child_nodes(node))


def _string_refs(tree: ast.AST) -> Iterator[tuple[ast.Constant, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = ast.unparse(node.func)
            if fn.endswith("import_module") and node.args and isinstance(node.args[0], ast.Constant):
                yield node.args[0], "import_module"
            for kw in node.keywords:
                if kw.arg == "home" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    yield kw.value, "home"
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and ":" in node.value \
                and REF.fullmatch(node.value):
            yield node, "ref"


def build(root: Path = ROOT) -> Graph:
    g = Graph()
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            g.modules[module_name(path, root)] = path
    for mod, path in g.modules.items():
        src = path.read_text()
        lines = src.splitlines()
        tree = ast.parse(src)
        is_pkg = path.name == "__init__.py"
        for node, in_fn, in_tc in _walk(tree):
            if in_tc or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    pkg_parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg_parts = pkg_parts[: len(pkg_parts) - (node.level - 1)]
                    base = ".".join(pkg_parts + ([node.module] if node.module else []))
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            targets = {t for t in (_resolve(n, g.modules) for n in names) if t and t != mod}
            # `from pkg import sub` names the submodule, not the package it comes from
            if isinstance(node, ast.ImportFrom) and len(targets) > 1:
                targets.discard(_resolve(names[-1], g.modules) or "")
            kind = "function" if in_fn else "top"
            for t in sorted(targets):
                g.imports.append(Import(mod, t, node.lineno, kind, _comment(lines, node.lineno) if in_fn else ""))
        if mod == COMMAND_TABLE:
            continue
        seen: set[int] = set()
        for const, how in _string_refs(tree):
            if id(const) in seen:
                continue
            seen.add(id(const))
            target = _resolve(str(const.value).split(":")[0], g.modules)
            if target and target != mod:
                reason = HOME_REASON if how == "home" else _comment(lines, const.lineno)
                g.imports.append(Import(mod, target, const.lineno, "string", reason))
    return g


def cycles(g: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), among statement imports."""
    edges, index, low, stack, on, out = g.edges(), {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def layer_violations(g: Graph) -> list[str]:
    out = []
    for i in g.imports:
        if i.kind == "string" and i.reason == HOME_REASON:
            continue  # a kind's home is loaded like a plugin module (raylhf/plugins/registry.py)
        src, dst = layer(i.source), layer(i.target)
        if dst in FORBIDDEN.get(src, set()):
            out.append(f"{i.source} ({src}) imports {i.target} ({dst}) at line {i.line}")
        if src == "trainers" and dst == "trainers":
            out.append(f"{i.source} imports another trainer, {i.target}, at line {i.line}")
    return out


def main(argv: list[str]) -> int:
    g = build()
    found = cycles(g)
    bad_layers = layer_violations(g)
    hidden = g.hidden()
    unexplained = [i for i in hidden if not i.reason]
    print(f"modules: {len(g.modules)}; statement imports: {sum(i.kind != 'string' for i in g.imports)}; "
          f"import cycles: {len(found)}; in-function imports: {sum(i.kind == 'function' for i in hidden)}; "
          f"string imports: {sum(i.kind == 'string' for i in hidden)} (budget {HIDDEN_BUDGET} together); "
          f"layer violations: {len(bad_layers)}")
    for c in found:
        print("cycle:", " <-> ".join(c))
    for v in bad_layers:
        print("layer:", v)
    for i in (hidden if "-v" in argv else unexplained):
        print(f"{i.kind}: {i.source}:{i.line} -> {i.target}" + (f"  # {i.reason}" if i.reason else "  (no reason)"))
    return 1 if found or bad_layers or unexplained or len(hidden) > HIDDEN_BUDGET else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
