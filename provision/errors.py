"""Errors the library raises; the CLI maps them to messages and exit codes."""

from __future__ import annotations


class ProvisionError(Exception):
    """Base class for every error the tool reports to a user."""


class InventoryError(ProvisionError):
    """The inventory file is malformed or invalid; carries every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class RoleError(ProvisionError):
    """A role file or its arguments are invalid."""


class HostUnreachable(ProvisionError):
    """A host could not be reached over SSH, or its connection died."""


class HostKeyMismatch(HostUnreachable):
    """A host presented a key different from the one recorded for it."""


class SudoRefused(ProvisionError):
    """sudo on a host refused the password it was given."""


class Interrupted(ProvisionError):
    """The run was interrupted (Ctrl-C, SIGTERM) before this host's work was done."""


class LabError(ProvisionError):
    """The local lab cluster cannot be brought up, inspected or torn down."""


class TrainError(ProvisionError):
    """A training job cannot be planned or launched as asked."""
