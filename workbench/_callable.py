"""Make a core module callable as a public API function.

``workbench.run`` and ``workbench.prompts`` are both modules (the run loop, prompt sets) and the
public API's names (``wb.run(...)``, ``wb.prompts(...)``). Python sets a package attribute to a
submodule whenever the submodule is imported, so a plain function of the same name would be
replaced by the module; instead the module itself is callable: calling it calls the API function
(``workbench.api.run`` / ``workbench.api.prompts``), and every ``from workbench.run import ...``
keeps working.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types


def make_callable(module_name: str, target: str) -> None:
    """Make ``sys.modules[module_name]`` callable as ``target`` (``"package.module:function"``,
    imported on the first call)."""
    where, name = target.split(":")

    def resolve():
        return getattr(importlib.import_module(where), name)

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return resolve()(*args, **kwargs)

        @property
        def __signature__(self):  # what notebooks show for wb.run? / inspect.signature
            return inspect.signature(resolve())

    sys.modules[module_name].__class__ = CallableModule
