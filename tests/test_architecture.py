"""The layers hold: import-linter's contracts (pyproject.toml) and a cold API without torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    """No cycles, core/ free of the service, the API and the service free of torch."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "import-linter is a dev dependency (pip install -e '.[dev]')"
    run = subprocess.run([lint], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def _imports_torch(code: str) -> bool:
    probe = f"{code}\nimport sys\nprint('torch' in sys.modules)"
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    return run.stdout.strip().splitlines()[-1] == "True"


def test_the_api_starts_without_torch():
    assert not _imports_torch("import api.app\napi.app.create_app()")
    assert _imports_torch("import core.search")  # the probe can tell


def test_the_cli_parses_without_torch():
    """`blockprune api` and `blockprune --help` must not load the engine to parse arguments."""
    assert not _imports_torch("from blockprune.cli import build_parser\nbuild_parser()")
