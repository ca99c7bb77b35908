"""The architecture's rules, checked: imports point one way and never in a circle, the API
server runs without torch, the engine runs without the service's frameworks, SQL lives in the
store, HTTP errors in the API, and no module grows past one concern's size.

Each import check runs in a fresh interpreter, so that what an earlier test imported cannot hide
an import that the module itself makes.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 500
OUR_PACKAGES = ("service", "worker")


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
        "import service.app, service.infra.celery_app, worker.tasks\n"
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


def test_no_dashboard_script_is_longer_than_one_concern():
    """The dashboard's own scripts (not the vendored uPlot) keep to the modules' size too."""
    web = ROOT / "service" / "web"
    scripts = [p for p in sorted(web.glob("*.js"))]
    assert scripts, "the dashboard has its scripts in service/web"
    long = [
        f"{path.relative_to(ROOT)} ({n} lines)"
        for path in scripts
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert long == []


# ---- no circle of imports between our modules ------------------------------------------------


def _our_modules() -> dict[str, Path]:
    """Every module of service/ and worker/ by its dotted name (a package by its own name)."""
    modules = {}
    for package in OUR_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """The nodes inside `if TYPE_CHECKING:` blocks (by id): imports there never run."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside |= {id(n) for statement in node.body for n in ast.walk(statement)}
    return inside


def _import_graph() -> dict[str, set[str]]:
    """Which of our modules each of our modules imports, at any level: at the top, inside
    functions and inside try blocks alike. `from pkg import name` is an edge to the submodule
    pkg.name when that is a module, else to pkg; `import a.b` and `from a.b import x` are edges
    to a.b only, not to the packages above it (see test_no_import_cycle_between_our_modules)."""
    modules = _our_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = _type_checking_nodes(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                graph[name] |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:
                        graph[name].add(f"{base}.{alias.name}")
                    elif base in modules:
                        graph[name].add(base)
        graph[name].discard(name)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return groups


def _chain(graph: dict[str, set[str]], group: list[str]) -> str:
    """A shortest circle through the group's first module, as `a -> b -> a`."""
    start, members = group[0], set(group)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for target in sorted(graph[module] & members):
            if target == start:
                path = [module]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return " -> ".join([*reversed(path), start])
            if target not in came_from:
                came_from[target] = module
                queue.append(target)
    raise AssertionError(f"no circle through {start}")  # a group always has one


def test_no_import_cycle_between_our_modules():
    """No two or more of our modules (service.*, worker.*) import each other in a circle, at
    any level: an import inside a function is an edge like one at the top (it still says the
    one module needs the other). A circle is reported as a chain, `a -> b -> a`.

    What counts as an edge:
    - Importing a submodule (`import service.store.checkpoints`, `from service.store.checkpoints
      import x`) is an edge to that submodule only, not to the packages above it. Python runs
      their __init__ first, but a package __init__ that re-exports its own submodules depends on
      them, not they on it. An edge to a package exists only where a module names the package
      itself (`from service import store`, `from service.store import claim_experiment`), so a
      re-exporting __init__ is in a circle exactly when one of its submodules imports the
      package back.
    - Imports under `if TYPE_CHECKING:` are not edges: they never run, so they cannot make a
      module load half-initialised, and they name a type only for annotations."""
    graph = _import_graph()
    circles = [_chain(graph, group) for group in _circles(graph)]
    assert circles == []


def test_the_import_graph_sees_circles():
    """The check above finds a circle made of function-level and package imports alike."""
    graph = {"a": {"b.c"}, "b.c": {"b"}, "b": {"a", "b.c"}, "d": {"a"}}
    assert [_chain(graph, group) for group in _circles(graph)] == ["a -> b.c -> b -> a"]


# ---- what each part of the service may import ------------------------------------------------

# The README's Architecture table, last column: the parts of service/ each part may import (its
# own modules always). service.app and service.cli sit on top and may import every part; the
# CLI alone reaches worker/, inside its commands.
SERVICE_PARTS_MAY_IMPORT = {
    "contract": set(),
    "science": {"contract"},
    "store": {"contract", "science"},
    "access": {"contract", "store"},
    "schemas": {"contract", "science", "store", "access"},
    "infra": {"contract", "store", "schemas"},
    "api": {"contract", "science", "store", "access", "schemas", "infra"},
    "client": {"contract"},
}


def _part(module: str) -> str:
    """service.<part>.x -> <part>; worker.x -> worker."""
    parts = module.split(".")
    return "worker" if parts[0] == "worker" else parts[1] if len(parts) > 1 else "service"


def test_each_part_of_the_service_imports_only_the_parts_below_it():
    """contract <- science <- store <- access <- schemas <- infra <- api, and the client on the
    contract alone (it runs beside a notebook): at any level, as the import graph counts
    (annotations under TYPE_CHECKING aside)."""
    graph = _import_graph()
    offenders = [
        f"{module} -> {target}"
        for module, targets in sorted(graph.items())
        if module.startswith("service.") and _part(module) in SERVICE_PARTS_MAY_IMPORT
        for target in sorted(targets)
        if _part(target) != _part(module)
        and _part(target) not in SERVICE_PARTS_MAY_IMPORT[_part(module)]
    ]
    assert offenders == []


# ---- SQL in the store, HTTP errors in the API ------------------------------------------------

# What builds or runs SQL; outside the store a module of ours imports from SQLAlchemy only
# sessions, engines, URLs and errors.
SQL_BUILDERS = frozenset({
    "select", "insert", "update", "delete", "text", "func", "literal", "literal_column",
    "union", "union_all", "and_", "or_", "not_", "exists", "case", "cast", "tuple_",
    "bindparam", "column", "table", "values",
})


def _sql_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and (
            node.module == "sqlalchemy" or node.module.startswith("sqlalchemy.")
        ):
            if node.module.startswith(("sqlalchemy.sql", "sqlalchemy.dialects")):
                found.append(node.module)
            found += [alias.name for alias in node.names if alias.name in SQL_BUILDERS]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name == "sqlalchemy"]
    return found


def test_sql_lives_in_the_store():
    """Every query is a function of service/store/ (the tables are declared in
    service/contract/models.py): elsewhere no module builds SQL."""
    allowed = {ROOT / "service" / "contract" / "models.py"}
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for package in OUR_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path not in allowed and (ROOT / "service" / "store") not in path.parents
        for name in _sql_imports(path)
    ]
    assert offenders == []


def _http_errors(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in (
            "fastapi", "starlette"
        ):
            found += [alias.name for alias in node.names if alias.name == "HTTPException"]
        elif isinstance(node, ast.Raise) and node.exc is not None:
            raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if ast.unparse(raised).split(".")[-1] in ("HTTPException", "RequestValidationError"):
                found.append(f"raise {ast.unparse(raised)}")
    return found


def test_only_the_http_layer_raises_http_errors():
    """The store, the contract, the science, access and the infrastructure raise their own
    exceptions (store.ExperimentNotFound, quotas.QuotaExceeded, ...); the routes and their
    dependencies in service/api/, and the request parsing of service/schemas/ that they call,
    turn them into HTTP answers."""
    http_layer = (ROOT / "service" / "api", ROOT / "service" / "schemas")
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for package in OUR_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if not any(folder in path.parents for folder in http_layer)
        for name in _http_errors(path)
    ]
    assert offenders == []
