"""The import rule of docs/architecture.md, checked with import-linter's contracts in pyproject.toml:
the layers, front ends reaching models only through the service, no exporters in the server, no circles."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")],
                          cwd=root, capture_output=True, text=True, env={"PYTHONPATH": str(root)})


def test_the_tree_keeps_every_contract():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 4 kept, 0 broken." in done.stdout


def _tree(tmp_path: Path) -> Path:
    for name in ("server", "exporters"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def _add_import(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")


@pytest.mark.parametrize("module, line, broken", [
    ("server/core/errors.py", "import server.service.services", "server layers"),
    ("server/runtime/session.py", "import server.repository.config", "server layers"),
    ("server/api/http/v2.py", "import server.repository.registry", "front ends reach models only"),
    ("server/service/health.py", "import exporters.publish", "serving never needs the exporters"),
    ("server/generation/graph.py", "import server.generation.decoder", "no circles"),
])
def test_an_import_against_the_rule_breaks_a_contract(tmp_path, module, line, broken):
    tree = _tree(tmp_path)
    _add_import(tree / module, line)
    done = lint_imports(tree)
    assert done.returncode != 0
    report = done.stdout[done.stdout.index("Broken contracts"):]
    assert broken in report and line.split()[1].removeprefix("server.").split(".")[0] in report
