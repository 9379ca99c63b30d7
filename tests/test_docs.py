"""The documentation site builds with `mkdocs build --strict` (docstring warnings fail it)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_docs_build_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings_handlers.python",
                        reason="mkdocstrings[python] is not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         os.path.join(ROOT, "mkdocs.yml"), "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-5000:]
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("jaxbp.verify", "jaxbp.check_vjp", "jaxbp.testing.assert_backprop",
                 "jaxbp.nn.Sequential"):
        assert f'id="{name}"' in api, f"{name} missing from the API reference"
    for page in ("index.html", "verify/index.html", "testing/index.html", "modules/index.html"):
        assert (site / page).is_file()
