"""The package layout's rules (docs/design.md, "Layers"), checked on the source: engine / digits application / command
line, no import cycles, no module using another module's private names, and an engine that imports without the
`digits` extra and without loading the U-Net modules."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Source folders and the package names they are installed as (setup.py's package_dir).
SOURCES = {"fastsde": "fastsde", "kernels": "fastsde.kernels", "benchmarks": "fastsde.benchmarks"}
APPLICATION = ("fastsde.digits", "fastsde.cli")
EXTENSIONS = {"fastsde._C"}  # compiled modules: a private module, not a private name


def _modules() -> dict[str, str]:
    """module name -> file path, for every .py file of the package."""
    found = {}
    for folder, package in SOURCES.items():
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), os.path.join(ROOT, folder))
                parts = rel[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join([package] + parts)] = os.path.join(dirpath, name)
    return found


MODULES = _modules()


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _imports(module: str) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every import statement of `module`, at any depth."""
    path = MODULES[module]
    tree = ast.parse(open(path).read(), path)
    is_package = path.endswith("__init__.py")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub, None) if sub in MODULES else (base, alias.name))
    return [(m, n) for m, n in out if m == "fastsde" or m.startswith("fastsde.")]


def _edges() -> dict[str, set[str]]:
    return {m: {t for t, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}


def _is_ancestor(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_no_import_cycles():
    """No cycle among the package's modules (a package importing its own submodules is not a cycle)."""
    edges = {m: {t for t in ts if not _is_ancestor(m, t) and not _is_ancestor(t, m)} for m, ts in _edges().items()}
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
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
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            strong(v)
    assert cycles == []


def test_no_private_cross_module_names():
    """No module imports another module's _private name (private modules such as fastsde._native are fine)."""
    bad = [f"{m} imports {t}.{n}" for m in MODULES for t, n in _imports(m)
           if n is not None and n.startswith("_") and not n.startswith("__") and t != m
           and f"{t}.{n}" not in EXTENSIONS]
    assert bad == []


def test_engine_does_not_import_the_application():
    """The engine imports nothing from fastsde.digits or fastsde.cli; benchmarks never import the command line."""
    bad = []
    for m in MODULES:
        targets = {t for t, _ in _imports(m)}
        if not m.startswith(APPLICATION) and not m.startswith("fastsde.benchmarks") and m != "fastsde.__main__":
            bad += [f"{m} -> {t}" for t in targets if t.startswith(APPLICATION)]
        if m.startswith("fastsde.benchmarks"):
            bad += [f"{m} -> {t}" for t in targets if t.startswith("fastsde.cli")]
    assert bad == []


def test_rules_catch_a_violation(tmp_path, monkeypatch):
    """The walker sees a private cross-module import and a cycle when there is one (so the tests above can fail)."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from fastsde.fake.b import _secret\n")
    b.write_text("def f():\n    from fastsde.fake import a\n")
    monkeypatch.setitem(MODULES, "fastsde.fake.a", str(a))
    monkeypatch.setitem(MODULES, "fastsde.fake.b", str(b))
    assert ("fastsde.fake.b", "_secret") in _imports("fastsde.fake.a")
    with pytest.raises(AssertionError):
        test_no_private_cross_module_names()
    with pytest.raises(AssertionError):
        test_no_import_cycles()


def test_engine_imports_without_the_digits_extra():
    """`import fastsde, fastsde.sampling` with scikit-learn, matplotlib and tqdm blocked works, samples, and loads no
    U-Net module (fastsde.nn, fastsde.models.ncsnpp) and no scipy (the ODE integrators import it on first use)."""
    code = textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("sklearn", "matplotlib", "tqdm"):
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        import torch
        import fastsde, fastsde.sampling
        from fastsde.models import analytic
        sde = fastsde.VESDE(sigma_max=5.0, N=20)
        model = analytic.AnalyticScoreModel(analytic.get_mixture("ring"), sde, continuous=True)
        x, nfe = fastsde.get_pc_sampler(sde, (8, 2), "reverse_diffusion", "none", lambda x: x, 0.16, eps=1e-5,
                                        seed=0, progress=True)(model)
        assert torch.isfinite(x).all() and nfe == 40  # score_sde counts N (n_steps + 1)
        loaded = sorted(m for m in sys.modules if m.startswith(("fastsde.nn", "fastsde.models.ncsnpp", "sklearn",
                                                                 "matplotlib", "tqdm", "scipy")))
        assert loaded == [], loaded
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
