"""The vLLM APIs raylhf uses, compared between two vLLM source trees without importing either (AST only).

    .venv/bin/python scripts/gpu_kit/vllm_api_diff.py --old /tmp/vllm026/vllm --new .venv/lib/python3.11/site-packages/vllm

``--old`` / ``--new``: a ``vllm`` package folder (an unpacked wheel works: ``unzip vllm-0.26.0-*.whl 'vllm/*.py'``).
Prints one Markdown row per API: present in each tree, and the signature where it differs. The list of APIs is
``CHECKS`` below (what actors/rollout.py, actors/vllm_transfer.py and actors/quiet.py call); ``actors/vllm_compat.py``
covers the rows that differ.
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass
from pathlib import Path

# (module, symbol, members): a member "name" is a method or a field; "" checks the symbol alone
CHECKS: list[tuple[str, str, list[str]]] = [
    ("vllm.engine.arg_utils", "AsyncEngineArgs", [
        "model", "tensor_parallel_size", "distributed_executor_backend", "dtype", "enforce_eager",
        "gpu_memory_utilization", "enable_sleep_mode", "max_model_len", "seed", "logprobs_mode", "trust_remote_code",
        "enable_prefix_caching", "enable_chunked_prefill", "max_num_batched_tokens", "worker_extension_cls",
        "use_tqdm_on_load", "weight_transfer_config", "enable_log_requests"]),
    ("vllm.v1.engine.async_llm", "AsyncLLM", [
        "from_engine_args", "generate", "abort", "pause_generation", "resume_generation", "reset_prefix_cache",
        "collective_rpc", "init_weight_transfer_engine", "start_weight_update", "update_weights",
        "finish_weight_update", "get_weight_version", "sleep", "wake_up", "is_sleeping"]),
    ("vllm.v1.engine", "PauseMode", []),
    ("vllm.inputs", "TokensPrompt", []),
    ("vllm.sampling_params", "SamplingParams", [
        "n", "temperature", "seed", "output_kind", "top_p", "top_k", "max_tokens", "logprobs", "prompt_logprobs",
        "stop", "include_stop_str_in_output", "clone"]),
    ("vllm.sampling_params", "RequestOutputKind", ["FINAL_ONLY"]),
    ("vllm.config.weight_transfer", "WeightTransferConfig", ["backend"]),
    ("vllm.distributed.weight_transfer.base", "WeightTransferEngine", [
        "__init__", "init_info_cls", "update_info_cls", "supports_draft_weight_update", "parse_init_info",
        "parse_update_info", "init_transfer_engine", "start_weight_update", "finish_weight_update",
        "update_weights", "receive_weights", "shutdown", "set_weight_update_target"]),
    ("vllm.distributed.weight_transfer.base", "WeightTransferInitInfo", []),
    ("vllm.distributed.weight_transfer.base", "WeightTransferUpdateInfo", []),
    ("vllm.distributed.weight_transfer.base", "WeightTransferInitRequest", ["init_info"]),
    ("vllm.distributed.weight_transfer.base", "WeightTransferUpdateRequest", ["update_info"]),
    ("vllm.distributed.weight_transfer.base", "TrainerWeightTransferEngine", ["trainer_init", "send_weights"]),
    ("vllm.distributed.weight_transfer.factory", "WeightTransferEngineFactory", [
        "_registry", "register_engine", "create_engine"]),
    ("vllm.distributed.weight_transfer.factory", "WeightTransferTrainerFactory", ["trainer_init"]),
    ("vllm.distributed.weight_transfer.ipc_engine", "IPCWeightTransferInitInfo", ["packed"]),
    ("vllm.distributed.weight_transfer.ipc_engine", "IPCWeightTransferUpdateInfo", [
        "names", "dtype_names", "shapes", "ipc_handles", "tensor_sizes", "packed"]),
    ("vllm.distributed.weight_transfer.ipc_engine", "IPCWeightTransferEngine", ["trainer_send_weights"]),
    ("vllm.distributed.weight_transfer.ipc_engine", "IPCTrainerSendWeightsArgs", []),
    ("vllm.distributed.weight_transfer.ipc_engine", "IPCTrainerWeightTransferEngine", []),
    ("vllm.distributed", "get_tensor_model_parallel_rank", []),
    ("vllm.model_executor.model_loader.reload", "initialize_layerwise_reload", []),
    ("vllm.model_executor.model_loader.reload", "finalize_layerwise_reload", []),
    ("vllm.logging_utils", "NewLineFormatter", []),
    ("vllm.logger", "set_vllm_process_name", []),
]


@dataclass
class Found:
    kind: str  # class | def | name | import | lazy
    node: ast.AST | None
    file: Path | None


class Tree:
    """A vLLM source tree read with ``ast``: symbols followed through ``from x import y`` and lazy exports."""

    def __init__(self, root: Path) -> None:
        self.root = root  # the `vllm` package folder
        self.cache: dict[Path, ast.Module] = {}

    def file(self, module: str) -> Path | None:
        parts = module.split(".")
        if parts[0] != "vllm":
            return None
        if len(parts) == 1:
            return self.root / "__init__.py"
        rel = Path(*parts[1:])
        for cand in (self.root / rel.with_suffix(".py"), self.root / rel / "__init__.py"):
            if cand.is_file():
                return cand
        return None

    def parse(self, path: Path) -> ast.Module:
        if path not in self.cache:
            self.cache[path] = ast.parse(path.read_text(encoding="utf-8"))
        return self.cache[path]

    def find(self, module: str, name: str, depth: int = 0) -> Found | None:
        path = self.file(module)
        if path is None or depth > 6:
            return None
        tree = self.parse(path)
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return Found("class", node, path)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
                return Found("def", node, path)
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return Found("name", node, path)
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
                return Found("name", node, path)
        for node in ast.walk(tree):  # imports (also inside try / if blocks)
            if isinstance(node, ast.ImportFrom) and node.module and any(
                    (a.asname or a.name) == name for a in node.names):
                src = node.module if node.level == 0 else _relative(module, path, node.module, node.level)
                orig = next(a.name for a in node.names if (a.asname or a.name) == name)
                return self.find(src, orig, depth + 1) or Found("import", node, path)
        for node in tree.body:  # `from .x import *`
            if isinstance(node, ast.ImportFrom) and node.names[0].name == "*" and node.module:
                src = node.module if node.level == 0 else _relative(module, path, node.module, node.level)
                hit = self.find(src, name, depth + 1)
                if hit is not None:
                    return hit
        if f'"{name}"' in path.read_text(encoding="utf-8"):  # lazy exports (module __getattr__ tables)
            return Found("lazy", None, path)
        return None

    def members(self, found: Found, module: str, depth: int = 0) -> dict[str, str]:
        """Fields and methods of a class (its bases within the tree first): name -> signature text."""
        out: dict[str, str] = {}
        node = found.node
        if not isinstance(node, ast.ClassDef) or depth > 6:
            return out
        for base in node.bases:
            bname = ast.unparse(base).split("[")[0].split(".")[-1]
            b = self.find(_module_of(self.root, found.file), bname) if found.file else None
            if b is not None and b.file is not None:
                out.update(self.members(b, _module_of(self.root, b.file), depth + 1))
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                out[item.name] = _signature(item)
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                out[item.target.id] = "field: " + ast.unparse(item.annotation)
            elif isinstance(item, ast.Assign):
                for t in item.targets:
                    if isinstance(t, ast.Name):
                        out[t.id] = "= " + ast.unparse(item.value)[:60]
        return out


def _module_of(root: Path, path: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _relative(module: str, path: Path, target: str, level: int) -> str:
    pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    pkg = pkg[: len(pkg) - (level - 1)]
    return ".".join([*pkg, target]) if target else ".".join(pkg)


def _signature(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args if x.arg not in ("self", "cls")]
    if a.vararg:
        names.append("*" + a.vararg.arg)
    elif a.kwonlyargs:
        names.append("*")
    names += [x.arg for x in a.kwonlyargs]
    if a.kwarg:
        names.append("**" + a.kwarg.arg)
    ret = f" -> {ast.unparse(fn.returns)}" if fn.returns else ""
    return f"({', '.join(names)}){ret}"


def compare(old: Tree, new: Tree) -> list[tuple[str, str, str]]:
    """Rows ``(api, old, new)``: "-" absent, "ok" same, else the signature on that side."""
    rows = []
    for module, symbol, members in CHECKS:
        fo, fn = old.find(module, symbol), new.find(module, symbol)
        rows.append((f"{module}.{symbol}", "ok" if fo else "-", "ok" if fn else "-"))
        if not members:
            continue
        mo = old.members(fo, module) if fo else {}
        mn = new.members(fn, module) if fn else {}
        for m in members:
            so, sn = mo.get(m), mn.get(m)
            if so is not None and so == sn:
                rows.append((f"{symbol}.{m}", "ok", "ok"))
            else:
                rows.append((f"{symbol}.{m}", so or "-", sn or "-"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, type=Path, help="the older vllm package folder (e.g. 0.26.0)")
    p.add_argument("--new", required=True, type=Path, help="the newer vllm package folder (e.g. 0.32.0)")
    p.add_argument("--only-differences", action="store_true")
    args = p.parse_args(argv)
    rows = compare(Tree(args.old), Tree(args.new))
    print(f"| API | {args.old} | {args.new} |\n|---|---|---|")
    for api, o, n in rows:
        if args.only_differences and o == n == "ok":
            continue
        print(f"| `{api}` | {o} | {n} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
