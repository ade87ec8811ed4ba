"""Operations: compare wanted state with facts and yield commands, or say why none is needed.

Every module in this package registers its operations with @operation when imported.
"""

import importlib
import pkgutil

from provision.operations.base import (REGISTRY, Change, Command, Failure, HostContext, NoChange,
                                       Operation, Outcome, Skip)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Change", "Command", "Failure", "HostContext", "NoChange", "Operation",
           "Outcome", "Skip"]
