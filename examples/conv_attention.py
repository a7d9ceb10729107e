"""Example model file for `edgekit compile --model examples/conv_attention.py:build`."""
from edgekit.zoo import conv_attention


def build():
    return conv_attention()
