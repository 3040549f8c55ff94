"""The package's shape, enforced: levels import only downward, the public face is lazy and complete.

Levels (docs/design.md §12), lowest first; a module may import from its own subpackage and from strictly
lower levels, never from a level above or a sibling at its own level, never the package root.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import steerlab

PACKAGE = Path(steerlab.__file__).parent
LEVELS: list[set[str]] = [
    {"errors", "version", "progress", "signals"},
    {"io", "model"},
    {"formats", "vectors"},
    {"activations"},
    {"steering", "finetune", "judge"},
    {"engines"},
    {"extract", "evaluate", "serve"},
    {"pipelines"},
    {"report"},
    {"cli"},
    {"__main__"},  # python -m steerlab
]
LEVEL = {name: i for i, names in enumerate(LEVELS) for name in names}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(["steerlab", *parts]), path))
    return out


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every steerlab import in the file, function-level ones included."""
    is_pkg = path.name == "__init__.py"
    package = module.split(".") if is_pkg else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target == "steerlab" or target.startswith("steerlab."):
                if target == "steerlab.__init__" or target == "steerlab":
                    found.extend((node.lineno, f"steerlab.{a.name}") for a in node.names)
                else:
                    found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "steerlab")
    return found


def _top(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_every_subpackage_has_a_level():
    tops = {_top(m) for m, _ in _modules()} - {""}
    assert tops <= set(LEVEL), f"subpackages without a level: {sorted(tops - set(LEVEL))}"


def test_modules_import_only_from_lower_levels():
    violations = []
    for module, path in _modules():
        own = _top(module)
        if not own:
            continue  # the root face
        for line, target in _imports(module, path):
            other = _top(target)
            where = f"{path.relative_to(PACKAGE)}:{line} imports {target}"
            if not other or target.split(".")[1] not in LEVEL:
                violations.append(f"{where} (the package root)")
            elif other != own and LEVEL[other] >= LEVEL[own]:
                violations.append(f"{where} (level {LEVEL[other]} from level {LEVEL[own]})")
    assert not violations, "\n".join(violations)


def test_the_level_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from ..pipelines.sweep import run_sweep\nfrom .. import load_model\n")
    targets = [t for _, t in _imports("steerlab.model.bad", bad)]
    assert targets == ["steerlab.pipelines.sweep", "steerlab.load_model"]
    assert LEVEL[_top(targets[0])] > LEVEL["model"]


def test_public_face_is_lazy_complete_and_shadows_no_subpackage():
    subpackages = {m.name for m in pkgutil.iter_modules([str(PACKAGE)])}
    assert not set(steerlab.__all__) & subpackages
    for name in steerlab.__all__:
        assert getattr(steerlab, name) is not None, name
        if name != "__version__":
            module = importlib.import_module(f"steerlab.{steerlab._FACE[name]}")
            assert getattr(module, name) is getattr(steerlab, name)
    code = "import sys, steerlab; print(sorted(m for m in ('torch', 'transformers', 'typer') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"import steerlab loaded {out.strip()}"


def _public_callables_without_docstring() -> list[str]:
    missing = []
    for _, path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rel = path.relative_to(PACKAGE)
        for node in tree.body:
            public = not node.name.startswith("_") if hasattr(node, "name") else False
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and public:
                if (
                    rel.parts[0] == "cli"
                    and isinstance(node, ast.FunctionDef)
                    and any("command" in ast.unparse(d) for d in node.decorator_list)
                ):
                    if ast.get_docstring(node) is None:  # a command's docstring is its --help text
                        missing.append(f"{rel}:{node.lineno} {node.name}")
                    continue
                if ast.get_docstring(node) is None:
                    missing.append(f"{rel}:{node.lineno} {node.name}")
                if isinstance(node, ast.ClassDef):
                    for item in node.body:
                        if (
                            isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                            and not item.name.startswith("_")
                            and ast.get_docstring(item) is None
                        ):
                            missing.append(f"{rel}:{item.lineno} {node.name}.{item.name}")
    return missing


def test_every_public_callable_has_a_docstring():
    missing = _public_callables_without_docstring()
    assert not missing, f"{len(missing)} public callables without a docstring:\n" + "\n".join(missing)
