"""provision train: plan a distributed PyTorch job over the inventory, run by torchrun per node."""

from provision.train.argv import NodeCommand, node_command, remote_script
from provision.train.config import TrainConfig, build_train_config

__all__ = ["NodeCommand", "TrainConfig", "build_train_config", "node_command", "remote_script"]
