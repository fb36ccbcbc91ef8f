"""unitree: one framework-neutral view of a neural network's parameter tree.

>>> import unitree as ut
>>> tree = ut.wrap(net)                  # torch nn.Module
>>> tree["2.weight"].shape
(1, 8)

Importing unitree imports no framework: an adapter is loaded the first time
a model of its framework is wrapped.
"""

from ._adapter import Adapter, Leaf
from ._check import Comparison
from ._checkpoint import load, save
from ._errors import (
    CheckpointError,
    NonFiniteError,
    ParamIndexError,
    PathError,
    PortError,
    ShapeError,
    StateDictError,
    UninitializedError,
    UnitreeError,
    UnsupportedError,
    UnsupportedModelError,
    ValueTypeError,
)
from ._param import Param
from ._picture import Summary
from ._port import Check, Pair, PortReport, compare, port
from ._registry import register_layer
from ._tree import Node, ParamTree, summary, wrap
from ._write import LoadResult

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "Check",
    "CheckpointError",
    "Comparison",
    "Leaf",
    "LoadResult",
    "Node",
    "NonFiniteError",
    "Pair",
    "Param",
    "ParamIndexError",
    "ParamTree",
    "PathError",
    "PortError",
    "PortReport",
    "ShapeError",
    "StateDictError",
    "Summary",
    "UninitializedError",
    "UnitreeError",
    "UnsupportedError",
    "UnsupportedModelError",
    "ValueTypeError",
    "compare",
    "load",
    "port",
    "register_layer",
    "save",
    "summary",
    "wrap",
]
