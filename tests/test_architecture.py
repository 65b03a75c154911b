"""The import rules of the architecture (pyproject's [tool.importlinter]): core imports no component,
data/vae/dit are independent (training reads data only through `components.data.loader`), and only
`flows` imports prefect."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": str(lint.parent), "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout + result.stderr
