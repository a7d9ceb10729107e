"""Tuned kernels (attention, selective scan). Ground layer: imports nothing else of edgekit.

The functions are bound here at import, after their subpackages, so `edgekit.kernels.attention` stays the
function even though a subpackage of the same name exists (Python binds a subpackage on its parent only
when that subpackage is first imported, which happens just before these names are set).
"""
from .attention.api import attention
from .scan.api import selective_scan, selective_state_update

__all__ = ["attention", "selective_scan", "selective_state_update"]
