"""Operations: compare wanted state with facts and yield commands, or say why none is needed."""

from provision.operations import commands, files, system  # noqa: F401  (register operations)
from provision.operations.base import (REGISTRY, Change, Command, Failure, HostContext, NoChange,
                                       Operation, Outcome, Skip)

__all__ = ["REGISTRY", "Change", "Command", "Failure", "HostContext", "NoChange", "Operation",
           "Outcome", "Skip"]
