"""The architecture's rules, checked: imports point one way, the API server runs without torch,
the engine runs without the service's frameworks, and no module grows past one concern's size.

Each import check runs in a fresh interpreter, so that what an earlier test imported cannot hide
an import that the module itself makes.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 600


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("module", ["service.app", "service.cli", "worker.tasks"])
def test_imports_with_torch_blocked(module):
    """The API image has no torch: the app, the CLI and the task module load without it."""
    result = run_python(f"import sys; sys.modules['torch'] = None; import {module}")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("package", ["worker.engine", "worker.analysis"])
def test_engine_and_analysis_import_no_service_frameworks(package):
    """The engine and the analysis are usable from a notebook: no database, queue or web server."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"import {package} as package\n"
        "for info in pkgutil.iter_modules(package.__path__):\n"
        "    importlib.import_module(f'{package.__name__}.{info.name}')\n"
        "loaded = sorted(m for m in ('sqlalchemy', 'celery', 'fastapi', 'kombu', 'starlette')"
        " if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{package} loads {result.stdout.strip()}"


def test_importing_the_celery_app_creates_no_folder(tmp_path):
    """The Celery app is built by a factory: importing its module creates nothing on disk."""
    code = (
        "import os; os.environ['GROKLAB_DATA_DIR'] = os.getcwd()\n"
        "import worker.celery_app, worker.tasks\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []


def _module_level_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_service_imports_worker_only_inside_functions():
    """worker -> service, never the other way at load time: service reaches the worker only at
    the queue boundary and in the CLI commands that start a worker or train locally, inside
    functions."""
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "service").rglob("*.py"))
        for name in _module_level_imports(path)
        if name == "worker" or name.startswith("worker.")
    ]
    assert offenders == []


def test_service_never_imports_torch():
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "service").rglob("*.py"))
        if any(name == "torch" or name.startswith("torch.") for name in _module_level_imports(path))
    ]
    assert offenders == []


def test_no_module_is_longer_than_one_concern():
    long = [
        f"{path.relative_to(ROOT)} ({n} lines)"
        for folder in ("service", "worker")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert long == []


def _imported_modules(path: Path) -> set[str]:
    """Every module of ours that `path` imports, at load time or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_the_analysis_modules_import_one_way():
    """fourier holds the quantities, grid streams them, callback and fixed_keys use grid: no
    analysis module imports one that imports it back, not even inside a function."""
    folder = ROOT / "worker" / "analysis"
    modules = {f"worker.analysis.{path.stem}": path for path in folder.glob("*.py")
               if path.stem != "__init__"}
    imports = {name: _imported_modules(path) & set(modules) for name, path in modules.items()}
    circles = sorted(
        f"{a} <-> {b}" for a in imports for b in imports[a] if a < b and a in imports[b]
    )
    assert circles == []
