"""The README's promises: two Quickstart commands, and snippets that run."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_quickstart_has_exactly_two_commands():
    quickstart = README.read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", quickstart, flags=re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 2
    assert "experiments/train.py" in commands[0] and "pytest" in commands[1]
    # CI runs the same test command.
    ci = (README.parent / ".ci" / "run").read_text()
    assert "-m pytest -q -n auto" in ci and "-m pytest -q -n auto" in commands[1]


def test_python_snippets_run(tmp_path):
    """Every ```python block, in order, in one fresh interpreter (default float32 config)."""
    code = "\n\n".join(_blocks("python"))
    assert code.strip()
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
    env.pop("JAX_ENABLE_X64", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
