"""The Kubernetes conftest's helpers (`Cluster`, `state_dir`) under a module name of their own.

Test files cannot `from conftest import ...`: every test directory has a conftest.py and whichever
was imported last owns the name. This finds the one beside this file (the module pytest loaded).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).with_name("conftest.py").resolve()


def _conftest():
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) and Path(module.__file__).resolve() == _PATH:
            return module
    spec = importlib.util.spec_from_file_location("rankq_k8s_conftest", _PATH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_module = _conftest()
Cluster = _module.Cluster
state_dir = _module.state_dir
