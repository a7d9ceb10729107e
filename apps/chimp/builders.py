"""Entry points for `edgekit compile --model apps/chimp/builders.py:detector` (or :behavior): each returns the
shipped network and example inputs of its static shapes. Kept apart from model.py because the compile CLI
loads this file by path, outside the package."""
from edgekit.apps.chimp.model import ChimpModel


def detector():
    model = ChimpModel.load()
    return model.detector, model.example_inputs()["detector"]


def behavior():
    model = ChimpModel.load()
    return model.behavior, model.example_inputs()["behavior"]
