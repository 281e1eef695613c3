"""Each extra installs what its code imports, directly or through our other packages."""

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {"edge", "training", "export", "deploy", "device_tests", "sweep", "pipeline", "peers"}
EXTRAS_OF = {
    "edge": ["edge"],
    "deploy": ["deploy"],
    "device_tests": ["edge", "dev"],
    "training": ["train"],
    "export": ["export"],
    "sweep": ["export", "deploy"],
    "pipeline": ["export"],
    "peers": ["peers"],
}
# Imported inside the Picamera2 source only, from apt on Raspberry Pi OS: python3-picamera2 brings
# python3-libcamera (libcamera's Python bindings are not on PyPI).
ONLY_ON_A_PI = {"picamera2": "rpi", "libcamera": "rpi"}
# Installed only in make bench-peers' own environment (.venv-peers), not in the one the tests run in.
PEERS_ONLY = {
    "ai_edge_litert": "ai-edge-litert",
    "litert_torch": "litert-torch",
    "onnxruntime": "onnxruntime",
    "ncnn": "ncnn",
    "pnnx": "pnnx",
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(extras: list[str]) -> set[str]:
    """Distribution names installed with ``extras`` (base dependencies, self-references followed)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements, names = [*project["dependencies"]], set()
    pending = list(extras)
    while pending:
        for requirement in project["optional-dependencies"][pending.pop()]:
            name, _, rest = re.match(r"([A-Za-z0-9_.-]+)(\[([^\]]+)\])?", requirement).groups()
            if normalise(name) == normalise(project["name"]):
                pending += rest.split(",")
            else:
                requirements.append(requirement)
    for requirement in requirements:
        names.add(normalise(re.match(r"[A-Za-z0-9_.-]+", requirement).group()))
    return names


def imports(package: str, seen: set[str] | None = None) -> set[str]:
    """Top-level modules imported by ``package`` and by the packages of ours it imports."""
    seen = seen if seen is not None else set()
    seen.add(package)
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
    for ours in (found & OURS) - seen:
        found |= imports(ours, seen)
    return {name for name in found - OURS if name not in sys.stdlib_module_names}


def test_each_extra_installs_what_its_code_imports():
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for package, extras in EXTRAS_OF.items():
        names = declared(extras)
        for module in sorted(imports(package)):
            if module in ONLY_ON_A_PI:
                assert (
                    ONLY_ON_A_PI[module]
                    in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
                )
                continue
            providers = {normalise(d) for d in distributions.get(module, [PEERS_ONLY.get(module, "")]) if d}
            if not providers & names:
                missing.append(
                    f"{package} imports {module} ({', '.join(providers) or 'not installed'}), "
                    f"which {extras} do not install"
                )
    assert not missing, "\n".join(missing)


def test_the_check_sees_a_missing_extra():
    assert "torch" in imports("training") and "torch" not in declared(["edge"])
    assert {"torch", "lightning", "executorch"} <= declared(["export"]), "export follows its reference to train"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Our modules that ``path`` imports, at its top or inside a function: a cycle that works only because
    one side's import is deferred is still a cycle."""
    name, found = module_name(path), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m.split(".")[0] in OURS}


def test_the_tree_has_no_import_cycle():
    files = {module_name(p): p for top in OURS for p in (ROOT / top).rglob("*.py")}
    graph = {name: {m for m in imports_of(path) if m in files and m != name} for name, path in files.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph[name]):
            assert state.get(other) != "open", f"import cycle: {' -> '.join(trail[trail.index(other) :] + [other])}"
            if other not in state:
                visit(other, trail + [other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_importing_our_packages_changes_no_log_or_warning_filter():
    """The libraries are imported first; then ours, which must leave the filters as they were."""
    probe = (
        "import logging, warnings, lightning, torchao, executorch.exir\n"
        "def filters():\n"
        "    return (len(warnings.filters), {n: len(l.filters) for n, l in logging.Logger.manager.loggerDict.items()"
        " if isinstance(l, logging.Logger)})\n"
        "before = filters()\n"
        "import training.cli, training.restore, export.cli, sweep.cli, deploy.cli, edge.cli, pipeline.cli\n"
        "after = filters()\n"
        "print(before[0] == after[0] and all(after[1].get(k) == v for k, v in before[1].items()) and "
        "not any(v for k, v in after[1].items() if k not in before[1]))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.stdout.strip() == "True", result.stderr[-2000:]
