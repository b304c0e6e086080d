"""Test harness: makes the modules named in $POISE_TEST_HIDE_MODULES absent, as on an
install without the optional extra that brings them (put this folder first on PYTHONPATH).

A ``None`` entry in ``sys.modules`` is Python's own marker for "not importable": ``import``
raises ModuleNotFoundError and ``importlib.util.find_spec`` returns None.
"""
import os
import sys

for _name in filter(None, os.environ.get("POISE_TEST_HIDE_MODULES", "").split(",")):
    sys.modules[_name.strip()] = None
