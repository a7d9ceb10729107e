"""Packages under pyproject's package-dir roots, found by folder, so adding a package (an app, a backend's module
folder) needs no central list. Everything else lives in pyproject.toml."""
import tomllib
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent


def packages() -> list[str]:
    roots = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    found = []
    for name, folder in roots.items():
        root = HERE / folder
        for directory in sorted(d for d in [root, *root.rglob("*")] if d.is_dir()):
            rel = directory.relative_to(root)
            if "__pycache__" not in rel.parts and not any(p.startswith(".") for p in rel.parts):
                # data folders (apps/*/weights) too, as setuptools expects of folders holding package data
                found.append(".".join([name, *rel.parts]))
    return sorted(set(found))


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import packages()
    setup(packages=packages())
