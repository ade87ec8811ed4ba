"""Facts: one remote shell snippet plus a pure parser of its output."""

from provision.facts.base import Fact, batch_script, split_batch_output

__all__ = ["Fact", "batch_script", "split_batch_output"]
