"""``raylhf check-plugin FILE [FILE ...]``: load a user's plugin file and check every entry it registers against
its kind's interface (signature, and the return shape on a tiny synthetic input), before a long job.

Exit status: 0 every entry fits, 1 an entry does not fit (or the file registers nothing), 2 the file cannot be
loaded. The checks themselves live beside each kind's built-ins (``check_plugin_entry`` in the home module of
each entry of ``raylhf.plugins.registry.KINDS``, attached to its registry as ``interface_check``).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from raylhf.plugins.registry import KINDS, REWARDS, TABLES, PluginCheckError, Registry, load_plugin, normalize

USAGE = "usage: raylhf check-plugin FILE_OR_MODULE[:function] [...]"


@dataclass
class Finding:
    kind: str
    name: str
    source: str
    ok: bool
    detail: str


def _registries() -> dict[str, tuple[Registry[Any], Callable[[str, Any], str]]]:
    """Each kind's registry, its built-ins loaded (they are not the file's entries), and its interface check."""
    out = {}
    for name, kind in KINDS.items():
        try:
            kind.registry.load_home()
        except ImportError:  # a kind whose home is unavailable here
            continue
        if kind.registry.interface_check is not None:
            out[name] = (kind.registry, kind.registry.interface_check)
    return out


def _from(source: str, ref: str) -> bool:
    """Whether a registry source names the plugin ``ref`` (its path, absolute or as given, or its module)."""
    return any(source.startswith(x + ":") or source.startswith(x + " (") or source.startswith(x + ".")
               for x in {ref, normalize(ref)})


def check_reference(ref: str) -> list[Finding]:
    """``file.py:function`` (a reward named by reference in reward.functions): check that object as a reward."""
    home = REWARDS.load_home()
    assert home is not None and REWARDS.interface_check is not None
    obj = home.load_object(ref)
    try:
        return [Finding("reward", ref, ref, True, REWARDS.interface_check(ref, obj))]
    except PluginCheckError as e:
        return [Finding("reward", ref, ref, False, str(e))]


def check_file(ref: str) -> list[Finding]:
    """Load ``ref`` and check what it registered. Raises what the import raises (the caller reports it)."""
    if ":" in ref.rsplit("/", 1)[-1]:
        return check_reference(ref)
    kinds = _registries()
    before = {kind: {n: reg[n] for n in reg} for kind, (reg, _) in kinds.items()}
    load_plugin(ref)
    findings: list[Finding] = []
    for kind, (reg, check) in kinds.items():
        for name in list(reg):
            # new entries, and the file's own (registered by an earlier load of it in this process)
            if name in before[kind] and before[kind][name] is reg[name] and not _from(reg.source(name), ref):
                continue
            try:
                detail, ok = check(name, reg[name]), True
            except PluginCheckError as e:
                detail, ok = str(e), False
            except Exception as e:  # the entry crashed on the synthetic input
                detail, ok = f"raised {type(e).__name__}: {e} on a tiny synthetic input", False
            findings.append(Finding(kind, name, reg.source(name), ok, detail))
    return findings


def report(ref: str, out: Any = None) -> int:
    out = out or sys.stdout
    print(f"check-plugin {ref}", file=out)
    try:
        findings = check_file(ref)
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)
        where = next((f"{f.filename}:{f.lineno}" for f in reversed(tb) if "raylhf" not in f.filename
                      and "importlib" not in f.filename), "")
        print(f"  cannot load: {type(e).__name__}: {e}" + (f" (at {where})" if where else ""), file=out)
        return 2
    if not findings:
        print("  registers nothing: use the @register_* decorators from raylhf.plugins or define one of the tables "
              f"{', '.join(sorted(TABLES))}; a reward used as reward.functions FILE.py:function is checked with "
              "raylhf check-plugin FILE.py:function", file=out)
        return 1
    for f in findings:
        print(f"  {'ok  ' if f.ok else 'FAIL'} {f.kind} {f.name!r} ({f.source}): {f.detail}", file=out)
    bad = sum(not f.ok for f in findings)
    print(f"  {len(findings)} entries checked: {len(findings) - bad} ok, {bad} failed", file=out)
    return 1 if bad else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE + "\n\nLoads each plugin file and checks every entry it registers (callbacks, losses, loss "
              "scales, metrics, optimizers, tuners, agent templates, tools, envs, multi-turn schedulers, ORMs/PRMs) against "
              "its interface.")
        return 0 if args else 2
    return max(report(ref) for ref in args)


if __name__ == "__main__":
    raise SystemExit(main())
