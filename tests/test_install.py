"""Install anywhere: conf/ ships inside the built package, and the configs are found from either
place (the non-editable install's one-round run is in .ci/run)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fedquant.hydra_conf import config_dir

ROOT = Path(__file__).resolve().parent.parent


def test_the_built_wheel_ships_every_config(tmp_path):
    source = tmp_path / "source"  # a copy: a build/ folder left in the checkout would add stale files
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("fedquant", "strategies", "clients", "conf"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(tmp_path)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("fedquant-*.whl")
    shipped = {name.removeprefix("fedquant/conf/") for name in zipfile.ZipFile(wheel).namelist()
               if name.startswith("fedquant/conf/")}
    source = {path.relative_to(ROOT / "conf").as_posix() for path in (ROOT / "conf").rglob("*.yaml")}
    assert "config.yaml" in source and "experiment/fmnist_qafedavg.yaml" in source
    assert shipped == source


def test_the_installed_copy_of_conf_comes_first_then_the_source_tree(tmp_path):
    package, tree = tmp_path / "site" / "fedquant", tmp_path / "site"
    (tree / "conf").mkdir(parents=True)
    (tree / "conf" / "config.yaml").write_text("{}")
    package.mkdir()
    assert config_dir(package) == tree / "conf"  # a checkout: conf/ beside the package
    (package / "conf").mkdir()
    (package / "conf" / "config.yaml").write_text("{}")
    assert config_dir(package) == package / "conf"  # an installed package: its own copy


def test_missing_configs_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no conf/config.yaml in .*; reinstall fedquant \(pip install \.\)"):
        config_dir(tmp_path / "fedquant")
