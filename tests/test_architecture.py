"""The house rules of docs/architecture.md, checked on the source: imports run one way with no cycle, hidden
imports stay few and explained, modules and driver functions stay small, --help / --dry-run stay light, and every
import line shown to users works."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 410  # "a module that passes ~400 lines becomes a package with one file per concern"
MAX_FUNCTION_LINES = 85  # "no function over ~80 lines in the driver or trainers"
INLINE = re.compile(r"(?:`|#\s*or:\s*)(from (?:raylhf|actors|rewards|swift)[\w.]* import [\w, ]+\w)")
VERBS = ["grpo", "ppo", "online_dpo", "sft", "dpo", "kto", "rm", "gkd", "sample", "serve_reward", "check_plugin", "seq_cls",
         "embedding", "reranker", "generative_reranker"]


def _graph() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_graph", module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules["import_graph"])
    return sys.modules["import_graph"]


def test_no_import_cycle_and_imports_run_one_way() -> None:
    ig = _graph()
    g = ig.build()
    assert len(g.modules) > 100
    assert ig.cycles(g) == []
    assert ig.layer_violations(g) == []


def test_hidden_imports_are_few_and_each_has_a_reason() -> None:
    ig = _graph()
    hidden = ig.build().hidden()
    assert len(hidden) <= ig.HIDDEN_BUDGET, [f"{i.source}:{i.line} -> {i.target}" for i in hidden]
    assert [f"{i.source}:{i.line}" for i in hidden if not i.reason] == []


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The checker finds a cycle closed by an in-function import and a string import, so a test that passes
    means something."""
    ig = _graph()
    pkg = tmp_path / "raylhf"
    (pkg / "core").mkdir(parents=True)
    (tmp_path / "actors").mkdir()
    (tmp_path / "rewards").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("from raylhf.core import b\n")
    (pkg / "core" / "b.py").write_text("def f():\n    from raylhf.core import a  # why\n    return a\n")
    (pkg / "core" / "c.py").write_text("X = 'actors.thing:Y'\n")
    (tmp_path / "actors" / "thing.py").write_text("Y = 1\n")
    g = ig.build(tmp_path)
    assert ig.cycles(g) == [["raylhf.core.a", "raylhf.core.b"]]
    kinds = sorted((i.source, i.kind) for i in g.hidden())
    assert kinds == [("raylhf.core.b", "function"), ("raylhf.core.c", "string")]
    assert any("raylhf.core.c" in v for v in ig.layer_violations(g))  # core must not reach actors


def test_modules_and_driver_functions_stay_small() -> None:
    big = []
    for pkg in ("raylhf", "actors", "rewards"):
        for path in (ROOT / pkg).rglob("*.py"):
            n = len(path.read_text().splitlines())
            if n > MAX_MODULE_LINES:
                big.append(f"{path.relative_to(ROOT)}: {n} lines")
    long_fns = []
    for sub in ("driver", "trainers", "demo", "tools"):
        for path in (ROOT / "raylhf" / sub).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                    if n > MAX_FUNCTION_LINES:
                        long_fns.append(f"{path.relative_to(ROOT)}:{node.name}: {n} lines")
    assert big == [] and long_fns == []


def test_help_and_dry_run_load_neither_torch_nor_ray() -> None:
    code = (
        "import importlib, io, contextlib, json, sys\n"
        f"verbs = {VERBS!r}\n"
        "heavy = ('torch', 'ray', 'vllm', 'deepspeed', 'transformers')\n"
        "out = {}\n"
        "for verb in verbs:\n"
        "    main = importlib.import_module('raylhf.' + verb).main\n"
        "    for flag in (['--help'], ['--dry-run']):\n"
        "        if verb == 'check_plugin' and flag == ['--dry-run']:\n"
        "            continue\n"
        "        with contextlib.redirect_stdout(io.StringIO()) as buf:\n"
        "            rc = main(flag)\n"
        "        out[verb + ' ' + flag[0]] = [rc, len(buf.getvalue()) > 0, [m for m in heavy if m in sys.modules]]\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 2 * len(VERBS) - 1
    for what, (rc, printed, loaded) in results.items():
        assert rc == 0 and printed, what
        assert loaded == [], f"{what} loaded {loaded}"


def _documented_imports() -> list[tuple[str, str]]:
    """Every import line of the project's packages (and of ms-swift's plugin modules) shown in README.md,
    docs/ and examples/: (where, line)."""
    pattern = re.compile(r"^\s*(from (raylhf|actors|rewards|swift)(\.[\w.]+)? import [^#]+|import (raylhf|actors|rewards)"
                         r"(\.[\w.]+)*( as \w+)?)\s*(#.*)?$")
    out = []
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").rglob("*.py"))]
    for path in sources:
        text = path.read_text()
        if path.suffix == ".py":
            tree = ast.parse(text)
            lines = [ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        else:  # a parenthesised import goes on over several lines
            lines, pending = [], ""
            for raw in text.splitlines():
                if pending:
                    pending += " " + raw.strip()
                    if ")" in raw:
                        lines.append(pending.replace("( ", "(").replace(" )", ")"))
                        pending = ""
                elif pattern.match(raw) and "(" in raw and ")" not in raw:
                    pending = raw.strip()
                else:
                    lines.append(raw)
        for line in lines:
            m = pattern.match(line)
            if m and "..." not in line:
                out.append((str(path.relative_to(ROOT)), m.group(1).strip().rstrip(",")))
            # inline ones: `from swift.plugin import ORM, orms` in text, "# or: from ... import ..." in code
            for inline in INLINE.findall(line):
                out.append((str(path.relative_to(ROOT)), inline.strip().rstrip(",")))
    return out


def test_every_documented_import_line_works() -> None:
    found = _documented_imports()
    assert len(found) >= 10
    assert any(line.startswith("from rewards import") for _, line in found)
    assert any(line.startswith("from raylhf.plugins import") for _, line in found)
    code = (
        "import json, sys\n"
        "from raylhf.plugins import swift\n"
        "from raylhf.plugins.registry import ENVS, REWARDS, SCHEDULERS\n"
        "swift.install_shim(REWARDS.load_home(), ENVS.load_home(), SCHEDULERS.load_home())  # as a plugin load does\n"
        f"lines = {found!r}\n"
        "bad = []\n"
        "for where, line in lines:\n"
        "    try:\n"
        "        exec(line, {})\n"
        "    except Exception as e:\n"
        "        bad.append(f'{where}: {line}: {type(e).__name__}: {e}')\n"
        "print(json.dumps(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
