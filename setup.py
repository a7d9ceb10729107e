"""Packages under pyproject's package-dir roots, found by folder, so adding a package (an app, a backend's module
folder) needs no central list. Everything else lives in pyproject.toml."""
import tomllib
import warnings
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


def quiet_editable_note() -> None:
    """setuptools notes at every editable install of a package-dir mapping (its meta path finder) that a folder named
    like the package in the working directory could shadow it. Here that folder, edgekit/, is the package's own
    source, mapped to itself, and the finder serves the other roots (edgekit.compile -> compile/) from the repository
    root too (the tests run there): the note never applies, so this one note is filtered."""
    from setuptools.warnings import InformationOnly

    warnings.filterwarnings("ignore", message="Editable installation", category=InformationOnly)


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import packages()
    quiet_editable_note()
    setup(packages=packages())
