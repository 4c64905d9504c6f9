"""The layout shows the pipeline: costmodel never imports calib; costmodel.model (the schema, the
op records, the costs of a step) imports nothing of the machine or the presentation;
costmodel.machine (profile, prediction) imports nothing of the presentation; no two modules
import each other, even lazily; no module is longer than MAX_LINES; the predict path imports
nothing heavy."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import ROOT

PACKAGES = ("costmodel", "calib")
#: a module longer than this wants splitting along a seam (issue 13: "no module over ~400 lines")
MAX_LINES = 450


def _modules() -> dict[str, ast.Module]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = ast.parse(path.read_text(), str(path))
    return out


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` blocks (imports for annotations only)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    return skip


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere (module level or inside functions)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        skip = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            for target in targets:
                found = resolve(target)
                if found and found != name and not name.startswith(found + "."):  # a package's own __init__
                    graph[name].add(found)
    return graph


def test_costmodel_never_imports_calib():
    """...but the DataFrame API, an entry point as cli.py is, runs the machine's probe to transfer
    the reference profile (costmodel/api.py says so)."""
    bad = {(m, t) for m, targets in import_graph().items() if m.startswith("costmodel")
           for t in targets if t.startswith("calib")}
    assert bad == {("costmodel.api", "calib.probe")}


def test_the_model_imports_nothing_of_the_machine_or_the_presentation():
    allowed = ("costmodel.model", "costmodel.errors", "costmodel.units", "costmodel.files")
    bad = {(m, t) for m, targets in import_graph().items() if m.startswith("costmodel.model")
           for t in targets if not t.startswith(allowed)}
    # load_arch reads an .onnx file through the ONNX importer (the onnx extra), imported lazily
    assert bad <= {("costmodel.model.arch", "costmodel.importers.onnxfile")}


def test_the_machine_side_imports_nothing_of_the_presentation():
    bad = {(m, t) for m, targets in import_graph().items() if m.startswith("costmodel.machine")
           for t in targets if t.startswith("costmodel.present")}
    assert bad == set()


def test_no_module_is_longer_than_max_lines():
    paths = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")] + [ROOT / "cli.py"]
    long = {str(p.relative_to(ROOT)): n for p in paths if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_predict_path_imports_nothing_heavy():
    # printed by an atexit handler: the command line ends by os._exit after the atexit handlers
    code = ("import atexit, sys, runpy; sys.argv = ['costmodel', 'predict', 'examples/cifar10-layer7.yaml', '--by', "
            "'kind', '--profile', 'tests/golden/profile.json']\n"
            "atexit.register(lambda: print('HEAVY:' + ','.join(m for m in ('sympy', 'pandas', 'sklearn', 'matplotlib', "
            "'torch', 'scipy', 'calib') if m in sys.modules)))\n"
            "runpy.run_path('cli.py', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "HEAVY:"
