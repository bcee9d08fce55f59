"""Graph capture and dependency groups: trace a model (torch.fx, torch.export fallback), follow channel ids, group coupled channels.

``build_graph(model, example_inputs)`` returns a :class:`Graph` whose ``groups`` are the
dependency groups structured pruning scores and removes; ``register_op`` adds a channel
rule for a function or tensor method the built-in table does not know.
"""
from .capture import Captured, capture
from .groups import Graph, Group, GroupMember, build_graph
from .ops import register_op

__all__ = ["Captured", "Graph", "Group", "GroupMember", "build_graph", "capture", "register_op"]
