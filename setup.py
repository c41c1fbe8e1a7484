"""Packages for setuptools (the rest of the metadata is in pyproject.toml).

conf/ stays at the top of the source tree (the layout fixes it) and is also shipped inside the
built package as ``fedquant/conf``, so a plain ``pip install .`` runs from any directory
(fedquant.hydra_conf.CONFIG_DIR finds either). pyproject.toml alone cannot map a package onto a
folder outside the packages found by ``packages.find``; this is the one thing setup.py adds.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["fedquant*", "strategies*", "clients*"]), "fedquant.conf"],
    package_dir={"fedquant.conf": "conf"},
    package_data={"fedquant.conf": ["**/*.yaml"]},
)
