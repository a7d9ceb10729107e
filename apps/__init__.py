"""Apps: one folder each (see spec.py for the files it holds), found by registry.py; shared helpers beside them."""
