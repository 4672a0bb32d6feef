"""The layers run one way (docs/architecture.md): `models` is the leaf, `ppl`'s modelling core
imports only `models`, `inference` knows programs but no LM, and the LLM methods and the
application sit on top. Checked on the source (every import, lazy ones included) and at run time."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "inference", "ppl")
# and the package `ppl` itself
CORE = ("ppl.program", "ppl.reasoning", "ppl.errors", "ppl.thinksum", "ppl.tasks", "ppl.grading")


def layer(module: str) -> str:
    if module.startswith("models"):
        return "models"
    if module.startswith("inference"):
        return "inference"
    if module == "ppl" or any(module == c or module.startswith(c + ".") for c in CORE):
        return "core"
    return "top"


def allowed(importer: str, imported: str) -> bool:
    """Whether module `importer` may import module `imported` (both ours)."""
    kind = layer(importer)
    if kind == "models":
        return layer(imported) == "models"
    if kind == "core":
        return layer(imported) in ("models", "core")
    if kind == "inference":
        return layer(imported) == "inference" or imported in ("ppl", "ppl.program", "ppl.errors")
    return True


def is_module(root: Path, name: str) -> bool:
    path = root / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(root: Path, path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of our packages in a source file; `from X import y` counts
    as importing `X.y` when that is a module, else `X`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.append((node.lineno, name if is_module(root, name) else node.module))
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def violations(root: Path) -> list[str]:
    """Every upward import under `root`'s packages, as `file:line: importer -> imported`."""
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out += [f"{path.relative_to(root)}:{line}: {module} -> {name}"
                    for line, name in imports(root, path) if not allowed(module, name)]
    return sorted(out)


def test_no_import_runs_up():
    assert violations(ROOT) == []


def test_a_planted_upward_import_is_caught(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "ppl" / "solver.py").write_text("")
    (tmp_path / "ppl" / "program.py").write_text("")
    (tmp_path / "models" / "llama.py").write_text("from ppl.solver import Solver\n")
    (tmp_path / "inference" / "smc.py").write_text("from ppl.program import StateSpaceProgram\nimport models.llama\n")
    (tmp_path / "ppl" / "reasoning.py").write_text("def f():\n    from ppl import solver\n")
    assert violations(tmp_path) == [
        "inference/smc.py:2: inference.smc -> models.llama",
        "models/llama.py:1: models.llama -> ppl.solver",
        "ppl/reasoning.py:2: ppl.reasoning -> ppl.solver",
    ]


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(out.stdout.split())


def test_importing_a_layer_loads_nothing_above_it():
    assert not {"ppl", "inference"} & loaded_after("import models, models.prm, models.sampling")
    assert "models" not in loaded_after("import inference")  # kernels over programs: no LM
