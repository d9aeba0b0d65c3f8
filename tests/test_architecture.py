"""The architecture holds: `lint-imports` (import-linter) checks pyproject.toml's contracts, the layers of the
package (each imports only from the layers below it: no import circle, no upward import), and it does fail on a
contract the code breaks."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter is not installed (bash scripts/setup.sh dev)")


def lint(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_layers():
    result = lint()
    assert result.returncode == 0, result.stdout[-3000:]
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout


def test_a_broken_layer_contract_fails(tmp_path):
    """The same check with the layers upside down (errors above the CLI) must fail, naming an import."""
    config = tmp_path / "upside_down.toml"
    config.write_text('[tool.importlinter]\nroot_package = "lit_align"\n\n[[tool.importlinter.contracts]]\n'
                      'name = "upside down"\ntype = "layers"\nlayers = ["lit_align.errors", "lit_align.cli"]\n')
    result = lint("--config", str(config))
    assert result.returncode != 0 and "BROKEN" in result.stdout
    assert "lit_align.cli is not allowed to import lit_align.errors" in " ".join(result.stdout.split()), result.stdout
