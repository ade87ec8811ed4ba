"""The local lab: network namespaces on this machine that act as SSH hosts (`provision lab`).

    cluster.py    Lab, the entry point: up, down, status, and scripts and sshd per host
    files.py      the lab directory: its paths, state, credentials, inventory and known_hosts
    network.py    the bridge, each host's netns and veth, the addresses
    hosts.py      what a host is (namespaces, mounts) and how it boots
    processes.py  the hosts' inits and sshds, found and stopped through /proc
    init.py       PID 1 inside each host (standard library only: it runs standalone)
    tools.py      the programs and kernel features the lab needs
"""

from __future__ import annotations

from provision.lab.cluster import DEFAULT_HOSTS, DEFAULT_NAME, HostStatus, Lab
from provision.lab.hosts import OVERLAY_DIRS, LabHost
from provision.lab.network import DEFAULT_SUBNET, FIRST_HOST_OFFSET
from provision.lab.processes import ssh_answers

__all__ = ["DEFAULT_HOSTS", "DEFAULT_NAME", "DEFAULT_SUBNET", "FIRST_HOST_OFFSET", "OVERLAY_DIRS",
           "HostStatus", "Lab", "LabHost", "ssh_answers"]
