"""Files every host needs, across the controller's link about once: see relay.py."""

from provision.relay.files import SharedFile
from provision.relay.relay import Relay

__all__ = ["Relay", "SharedFile"]
