"""The local lab: network namespaces on this machine that act as SSH hosts (`provision lab`)."""

from __future__ import annotations

from provision.lab.cluster import (DEFAULT_HOSTS, DEFAULT_NAME, DEFAULT_SUBNET, FIRST_HOST_OFFSET,
                                   OVERLAY_DIRS, HostStatus, Lab, LabHost, ssh_answers)

__all__ = ["DEFAULT_HOSTS", "DEFAULT_NAME", "DEFAULT_SUBNET", "FIRST_HOST_OFFSET", "OVERLAY_DIRS",
           "HostStatus", "Lab", "LabHost", "ssh_answers"]
