"""The package's layout: layers enforced by import-linter, experiments on the public API only."""

import ast
import pathlib
import shutil
import subprocess
import sys

import pytest

import jaxbp
from jaxbp import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINT_IMPORTS = pathlib.Path(sys.executable).with_name("lint-imports")
PUBLIC_MODULES = {"jaxbp", "jaxbp.nn", "jaxbp.testing", "jaxbp.adapters", "jaxbp.datasets"}


def _lint_imports(tree: pathlib.Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.exists():
        pytest.skip("import-linter is not installed (it is in the [test] extra)")
    return subprocess.run([str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml")],
                          cwd=tree, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})


def test_layers_contract_holds():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, upward", [
    ("core/_checks.py", "from jaxbp.check import _report"),       # core reaching up to check
    ("nn/_linear.py", "from jaxbp.train import _train"),           # nn reaching up to train
    ("check/_compare.py", "from jaxbp.cli import _main"),          # check reaching up to cli
], ids=["core->check", "nn->train", "check->cli"])
def test_planted_upward_import_fails_naming_it(tmp_path, module, upward):
    shutil.copytree(ROOT / "jaxbp", tmp_path / "jaxbp",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "jaxbp" / module
    path.write_text(path.read_text() + f"\n{upward}  # planted\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    importer = "jaxbp." + module[:-3].replace("/", ".")
    assert "BROKEN" in result.stdout and importer in result.stdout, result.stdout


def test_top_level_is_small_and_files_short():
    entries = [p.name for p in (ROOT / "jaxbp").iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 12, sorted(entries)
    for folder in ("jaxbp", "experiments"):
        for path in (ROOT / folder).rglob("*.py"):
            lines = path.read_text().count("\n")
            assert lines <= 400, f"{path.relative_to(ROOT)} has {lines} lines"


def test_every_public_name_imports_from_the_top():
    for name in jaxbp.__all__:
        assert getattr(jaxbp, name) is not None, name
    for name in nn.__all__:
        assert getattr(nn, name) is not None, name
    from jaxbp.cli import main  # the console script's entry point
    assert callable(main)


def _public(module: str, name: str | None) -> bool:
    if module not in PUBLIC_MODULES:
        return False
    if name is None:
        return True
    namespace = {"jaxbp": jaxbp.__all__, "jaxbp.nn": nn.__all__}.get(module)
    return namespace is None and not name.startswith("_") or name in (namespace or ())


def _experiment_imports(path: pathlib.Path):
    """Yields (line, module, name) for every jaxbp import and ``jaxbp.X`` attribute use."""
    tree = ast.parse(path.read_text())
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "jaxbp":
                    yield node.lineno, a.name, None
                    aliases[a.asname or "jaxbp"] = a.name if a.asname else "jaxbp"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jaxbp":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in PUBLIC_MODULES:
                    yield node.lineno, sub, None
                    aliases[a.asname or a.name] = sub
                else:
                    yield node.lineno, node.module, a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases):
            module = aliases[node.value.id]
            if f"{module}.{node.attr}" in PUBLIC_MODULES:
                continue
            yield node.lineno, module, node.attr


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.py")), ids=lambda p: p.name)
def test_experiments_use_only_the_public_api(path):
    bad = [f"line {line}: {module}{'.' + name if name else ''}"
           for line, module, name in _experiment_imports(path) if not _public(module, name)]
    assert not bad, f"{path.name} reaches past jaxbp's public API: {bad}"


def test_the_ast_check_catches_a_private_import(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text("import jaxbp\nfrom jaxbp.check._verify import verify\njaxbp._x\n"
                      "from jaxbp import nn\nnn.Linear\nnn._module\n")
    found = {(m, n) for _, m, n in _experiment_imports(script) if not _public(m, n)}
    assert found == {("jaxbp.check._verify", "verify"), ("jaxbp", "_x"), ("jaxbp.nn", "_module")}
