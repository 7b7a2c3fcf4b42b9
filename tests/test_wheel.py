"""The project installs as users install packages: a wheel that declares what it needs, importable from anywhere.

`pip install` of the wheel must keep a machine's own torch (a CUDA build on Colab or a cluster), so torch is declared
with a lower bound only. The wheel is built offline from a copy of the sources (the checkout stays untouched),
installed without dependencies into a fresh venv that sees this venv's packages through a .pth file, and imported
from a folder outside the repo: it must come from the fresh venv, with every declared requirement satisfied there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import importlib.metadata as metadata, json, grpo_helpers
from packaging.requirements import Requirement
runtime = [Requirement(r) for r in metadata.requires("grpo-notebooks") if "extra ==" not in r]
print(json.dumps({"module": grpo_helpers.__file__,
                  "unmet": [str(r) for r in runtime if metadata.version(r.name) not in r.specifier]}))
"""


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    """A command without this checkout on PYTHONPATH, failing the test with its output when it fails."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=120, env=env,
                            **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


def purelib(python: Path | str) -> Path:
    """The site-packages folder of the environment `python` runs in."""
    return Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built offline (no index, no build isolation) from a copy of pyproject.toml and grpo_helpers/."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT / "grpo_helpers", source / "grpo_helpers", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", source)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", work / "dist", source])
    (built,) = (work / "dist").glob("grpo_notebooks-*.whl")
    return built


def wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        lines = archive.read(metadata).decode().splitlines()
    return [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]


def test_the_wheel_declares_torch_with_a_lower_bound_only(wheel):
    runtime = {r.name: r for r in wheel_requirements(wheel) if r.marker is None}
    operators = {spec.operator for spec in runtime["torch"].specifier}
    assert operators == {">="}, f"torch is declared as {runtime['torch']}: a pin would replace the host's CUDA torch"
    assert {"transformers", "peft", "accelerate", "datasets", "safetensors", "pyyaml"} <= set(runtime)
    extras = {r.name for r in wheel_requirements(wheel) if r.marker is not None}
    assert {"deepspeed", "jupyterlab", "papermill", "pytest"} <= extras and not extras & set(runtime)


def test_the_wheel_carries_every_module_of_the_package(wheel):
    with zipfile.ZipFile(wheel) as archive:
        packed = {name for name in archive.namelist() if name.endswith(".py")}
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "grpo_helpers").rglob("*.py")}
    assert modules - packed == set()


def test_the_installed_wheel_imports_from_its_venv_outside_the_repo(wheel, tmp_path):
    fresh = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", fresh])
    python = fresh / "bin" / "python"
    site_packages = purelib(python)
    # this venv's packages (torch, transformers, ...) are visible; its editable grpo_helpers is not (a path added by
    # a .pth line is not scanned for further .pth files, so the checkout's editable finder stays out)
    (site_packages / "this_venv.pth").write_text(f"{purelib(sys.executable)}\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    probe = json.loads(run([python, "-c", PROBE], cwd=outside).stdout)
    assert Path(probe["module"]).is_relative_to(site_packages), probe["module"]
    assert probe["unmet"] == [], "this venv's versions (requirements.txt's pins) miss the declared bounds"
