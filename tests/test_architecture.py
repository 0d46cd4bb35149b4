"""The shape of the code: folders in layers, short functions, no import cycles, no patching
of medbench.

These are the rules docs/STYLE-level reviews kept asking for, written as tests so that they
hold: modules live in folders that import only their own folder and the layers below it
(docs/architecture.md draws them), radon's cyclomatic complexity of at most 15 and at most
90 lines per function (nested functions included) as `ruff format` writes them (src is
checked to be so formatted, with no line packed by hand under `# fmt: skip`), no cycle among medbench's modules (counting imports inside
functions too: an import moved into a function to dodge a cycle is still a cycle), and no
test or benchmark that replaces an attribute of a medbench module (dependencies are
injected instead: a clock, a runtime, a callback).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from radon.complexity import cc_visit
from radon.visitors import Function

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "medbench"
MAX_COMPLEXITY = 15
MAX_LINES = 90


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _functions(blocks) -> list[Function]:
    """Every function radon sees, methods and nested functions included."""
    out = []
    for block in blocks:
        if isinstance(block, Function):
            out.append(block)
            out.extend(_functions(block.closures))
        else:  # a class: its methods and their closures
            out.extend(_functions(block.methods))
            out.extend(_functions(getattr(block, "inner_classes", [])))
    return out


def _all_functions() -> list[tuple[str, Function]]:
    found = {
        (str(path.relative_to(ROOT)), f.lineno, f.fullname): f
        for path in _sources()
        for f in _functions(cc_visit(path.read_text()))
    }  # radon lists a method both alone and under its class: count it once
    return [(path, f) for (path, _, _), f in found.items()]


def test_no_function_is_more_complex_than_15():
    too_complex = [
        f"{path}:{f.lineno} {f.fullname} ({f.complexity})"
        for path, f in _all_functions()
        if f.complexity > MAX_COMPLEXITY
    ]
    assert not too_complex, "split these functions:\n" + "\n".join(too_complex)


def test_no_function_is_longer_than_90_lines():
    too_long = [
        f"{path}:{f.lineno} {f.fullname} ({f.endline - f.lineno + 1} lines)"
        for path, f in _all_functions()
        if f.endline - f.lineno + 1 > MAX_LINES
    ]
    assert not too_long, "split these functions:\n" + "\n".join(too_long)


def test_src_is_as_ruff_format_writes_it_so_the_line_rule_measures_what_a_reader_sees():
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--quiet", str(SRC)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, "run ruff format src:\n" + done.stdout + done.stderr


def test_no_line_of_src_is_packed_by_hand():
    packed = [
        f"{path.relative_to(ROOT)}:{i}"
        for path in _sources()
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if "fmt: skip" in line or "fmt: off" in line
    ]
    assert not packed, "let ruff format these lines:\n" + "\n".join(packed)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, known: set[str]) -> set[str]:
    """The medbench modules `path` imports anywhere (at the top or inside functions),
    except under `if TYPE_CHECKING:` (annotations, never executed)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("medbench"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                base = ".".join(parent[: len(parent) - node.level + 1] + ([base] if base else []))
            if base.startswith("medbench"):
                found.add(base)
                # `from medbench import engine` imports the module medbench.training.engine
                found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in known and m != module}


def _import_graph() -> dict[str, set[str]]:
    known = {_module_name(p) for p in _sources()}
    graph = {_module_name(p): _imports(p, known) for p in _sources()}
    # Importing a module runs its package's __init__ first; a package importing its own
    # modules is the package's API, not a cycle.
    return {
        m: {d for d in deps if not (m.startswith(d + ".") and d != "medbench")}
        for m, deps in graph.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_medbench_modules():
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


# The folders of src/medbench, lowest layer first: a module may import its own folder and
# the folders before it, never one after it. "medbench" is the package itself (its
# version, and the front door it loads by name, on first use) and errors.py.
LAYERS = (
    "medbench",
    "utils",
    "data",
    "models",
    "scoring",
    "runs",
    "training",
    "analysis",
    "report",
    "workflows",
    "serving",
    "cli",
)
TOP_LEVEL_MODULES = {"__init__.py", "__main__.py", "errors.py"}


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("errors",):
        return LAYERS.index("medbench")
    if parts[1] == "__main__":
        return LAYERS.index("cli")
    return LAYERS.index(parts[1])


def test_only_the_package_files_sit_directly_in_src_medbench():
    loose = sorted(p.name for p in SRC.glob("*.py") if p.name not in TOP_LEVEL_MODULES)
    assert not loose, f"move these into the folder of their layer: {loose}"
    folders = sorted(p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert set(folders) == set(LAYERS[1:]), f"a new folder belongs in LAYERS: {folders}"


def test_the_layer_finder_finds_an_upward_import():
    assert _upward({"medbench.data.loader": {"medbench.training.engine"}}) == [
        "medbench.data.loader (data) imports medbench.training.engine (training)"
    ]
    assert _upward({"medbench.training.engine": {"medbench.data.loader", "medbench"}}) == []


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{m} ({LAYERS[_layer(m)]}) imports {d} ({LAYERS[_layer(d)]})"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if _layer(d) > _layer(m)
    ]


def test_each_folder_imports_only_its_own_and_lower_layers():
    upward = _upward(_import_graph())
    assert not upward, "upward imports (move the code down, or inject it):\n" + "\n".join(upward)


def _medbench_names(tree: ast.Module) -> set[str]:
    """Names bound to medbench modules (or their attributes) by the file's imports."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("medbench"):
                    names.add((a.asname or a.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medbench"):
            names.update(a.asname or a.name for a in node.names)
    return names


def _root(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _patches(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    medbench = _medbench_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
            target = node.args[0]
            if name == "setattr" and (
                _root(target) in medbench
                or (isinstance(target, ast.Constant) and str(target.value).startswith("medbench"))
            ):
                found.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} setattr on {ast.unparse(target)}"
                )
        if isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Attribute) and _root(t) in medbench:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} assigns {ast.unparse(t)}")
    return found


def test_the_patch_finder_finds_a_patched_medbench_module(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "from medbench import engine as e\n"
        "import medbench.utils.runtime\n"
        "def test(monkeypatch):\n"
        "    monkeypatch.setattr(e, 'time', None)\n"
        "    medbench.utils.runtime.cpu_has_native_bf16 = lambda: True\n"
        "    monkeypatch.setattr('medbench.training.engine.train', None)\n"
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert len(_patches(tmp_path / "test_x.py")) == 3
    finally:
        ROOT = saved


@pytest.mark.parametrize("folder", ["tests", "benchmarks"])
def test_no_test_or_benchmark_patches_a_medbench_module(folder):
    found = [p for path in sorted((ROOT / folder).rglob("*.py")) for p in _patches(path)]
    assert not found, "inject the dependency instead:\n" + "\n".join(found)
