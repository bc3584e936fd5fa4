"""The dependency rules of shared/DESIGN.md, checked statically (import-linter, an import graph) and at run time."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its source, module level and inside functions alike.
    `from a import b` points at `a.b` when that is a module, else at `a`. Imports under `if TYPE_CHECKING:` are left
    out: they never run, and naming a type from a module that imports yours is not a dependency at run time."""
    root = package_dir.parent
    modules = {}
    for path in package_dir.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    prefix = package_dir.name
    graph = {}
    for name, path in modules.items():
        targets = set()
        tree = ast.parse(path.read_text())
        for guard in [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test).endswith("TYPE_CHECKING")]:
            guard.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == prefix}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == prefix:
                targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                            for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules, first = last), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_anywhere_in_eeopt():
    graph = import_graph(ROOT / "eeopt")
    assert len(graph) > 40
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_sees_function_level_imports(tmp_path):
    """evaluation.py and search.py once imported each other inside functions; such a cycle is found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "evaluation.py").write_text("def f():\n    from pkg.search import g\n    return g\n")
    (pkg / "search.py").write_text("def g():\n    from pkg import evaluation\n    return evaluation\n")
    (pkg / "leaf.py").write_text("import pkg.search\n")
    assert find_cycle(import_graph(pkg)) == ["pkg.evaluation", "pkg.search", "pkg.evaluation"]


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(cwd / "pyproject.toml")], capture_output=True, text=True,
                          cwd=cwd)


def test_import_contracts_hold():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "5 kept, 0 broken" in done.stdout


def test_every_module_is_in_a_layer():
    """Each top-level module and package of eeopt is named in the main layers contract (a new module that is in
    no contract could import anything)."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    named = {name.strip() for layer in config["layers"] for name in layer.split("|")}
    def children(folder: Path, package: str) -> set[str]:
        return {f"{package}.{p.stem}" for p in folder.iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}

    modules = children(ROOT / "eeopt", "eeopt") - {"eeopt.core"}
    modules |= children(ROOT / "eeopt" / "core", "eeopt.core")  # the core's modules are layers of their own
    assert len(modules) > 25 and modules - named == set(), sorted(modules - named)


def test_only_the_stores_package_reads_a_url_scheme():
    """Which kind of store a URL names is decided in eeopt/stores alone: no scheme literal ("sqlite:",
    "postgresql", "http://", "file:") and no `url_scheme` call anywhere else in eeopt/."""
    import re

    pattern = re.compile(r"""startswith\(\(?["'](sqlite|postgres|http|https|file|mysql|databricks)|url_scheme\(|"""
                         r"""["'](sqlite|postgresql|https?|file)://["']\s*(in|not in|==)""")
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for path in (ROOT / "eeopt").rglob("*.py") if "stores" not in path.relative_to(ROOT / "eeopt").parts
             for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == [], found
    # and the check can fail: the line that used to sit in study/tracking.py is found
    assert pattern.search('if tracking_uri.startswith(("http://", "https://")):')


def test_layer_contract_breaks_when_the_core_reaches_up(tmp_path):
    """The old edge metrics/efficiency.py -> policies (a lower layer importing a higher one) breaks the contract."""
    shutil.copytree(ROOT / "eeopt", tmp_path / "eeopt", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "eeopt" / "core" / "metrics" / "efficiency.py"
    target.write_text(target.read_text() + "\n\ndef _reach_up():\n    from eeopt.core.policies import evaluate_thresholds\n")
    done = _lint(tmp_path)
    assert done.returncode != 0 and "eeopt.core.metrics.efficiency -> eeopt.core.policies" in done.stdout, \
        done.stdout[-2000:]


def test_core_runs_without_heavy_libraries():
    """Using the core end to end (metrics, calibration, policies, sweep) loads no torch, Ray or MLflow."""
    code = (
        "import sys\n"
        "from eeopt.core.synthetic import synthetic_exit_outputs\n"
        "from eeopt.core.evaluation import evaluate_exits\n"
        "val, test = synthetic_exit_outputs(3, 300, 5, seed=1), synthetic_exit_outputs(3, 300, 5, seed=2)\n"
        "evaluate_exits(test, fit_on=val, calibrate='temperature', score='margin')\n"
        "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout
