"""House rule: the package persona_icm never imports Prefect (nor the Prefect layer flows/, tasks/)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORCHESTRATION = ("prefect", "flows", "tasks")


def imported_modules(path: Path) -> list[str]:
    """Every module an import statement in `path` names, at any depth (also imports inside functions)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


def test_no_persona_icm_source_imports_the_orchestration_layer():
    offenders = {
        str(path.relative_to(ROOT)): name
        for path in sorted((ROOT / "persona_icm").rglob("*.py"))
        for name in imported_modules(path)
        if name.split(".")[0] in ORCHESTRATION
    }
    assert offenders == {}


def test_the_ast_check_sees_a_lazy_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def run():\n    from flows.experiment import persona_icm\n    import prefect.artifacts\n")
    assert imported_modules(module) == ["flows.experiment", "prefect.artifacts"]


def test_importing_every_persona_icm_module_leaves_prefect_unloaded():
    probe = (
        "import importlib, pkgutil, sys\nimport persona_icm\n"
        "names = [m.name for m in pkgutil.walk_packages(persona_icm.__path__, 'persona_icm.')]\n"
        "for name in names:\n    importlib.import_module(name)\n"
        "print(len(names), sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'flows', 'tasks')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    count, loaded = done.stdout.strip().split(" ", 1)
    assert int(count) >= 20 and loaded == "[]"


def test_console_script_is_the_flows_entry_point_with_run_and_the_query_commands():
    import tomllib

    from flows.cli import add_run
    from persona_icm.cli import build_parser

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"] == {"persona-icm": "flows.cli:main"}
    parser, sub = build_parser()
    assert set(sub.choices) == {"runs", "sql", "report", "plan"}
    add_run(sub)
    args = parser.parse_args(["run", "--preset", "seed", "--set", "icm.alpha=2"])
    assert args.func.__module__ == "flows.cli" and args.preset == "seed" and args.set == ["icm.alpha=2"]


def test_no_library_or_orchestration_module_imports_tests_or_names_a_machine_path():
    """tests/ and benchmarks/ serve the code, never the other way round; no path of one machine."""
    offenders = {}
    for folder in ("persona_icm", "tasks", "flows"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            bad = [n for n in imported_modules(path) if n.split(".")[0] in ("tests", "benchmarks", "scripts")]
            bad += [p for p in ("/work/", "/home/", "/root/", "/tmp/") if p in text]
            if bad:
                offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}
