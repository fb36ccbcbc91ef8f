"""What a builder module gives the cases: one module per backend in ``builders/``.

A builder is thin: it builds the deck's models natively, exactly as the deck does on that
framework, runs them, and reads a value back through the framework's own API, so the cases
can check unitree against the framework. ``backends.load`` checks that a builder module has
every name of ``Builder``; a core test checks every builder file without importing it.

Every function that builds a model takes a keyword ``seed`` and draws every random value of
that build from it: the framework's own random state is seeded for the build (torch inside
``torch.random.fork_rng``, so the caller's generator is left as it was; Keras through
``keras.utils.set_random_seed``; Gluon through ``mx.random.seed``; Flax through keys and
``nnx.Rngs`` made from the seed), and numpy generators are ``default_rng(seed)``. The same
call with the same seed builds the same values, on every run and whatever ran before it;
a case that needs two models with other values (a model to load or port into, beside the
one it came from) passes other seeds.

The port model (``port_model``) is the same function on every backend, with the same paths:

    emb    Embedding(10, 8)                     (B, T) -> (B, T, 8)
    lstm   LSTM 8 -> 8, one layer, one direction, the whole sequence out
    norm   LayerNorm(8), eps 1e-5
    conv   Conv1D 8 -> 4, kernel 3, valid padding (channels-first frameworks transpose
           (B, T, C) -> (B, C, T) before it, as a user would)
           flatten: (B, 16), each framework in its own order (no parameters)
    fc     Dense 16 -> 8
    bn     BatchNorm over 8 features, eps 1e-5, momentum 0.1 as torch counts it
           (0.9 in Keras, Flax and Gluon), then ReLU
    tied_a Dense 8 -> 8, then ReLU
    tied_b the very same layer object as tied_a (a tie), then ReLU
    out    Dense 8 -> 3
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    import unitree as ut

Model = Any  # the framework's own model object (flax linen: the module with its variables)


class Builder(Protocol):
    """The names the cases, the port matrix and the safety tests read from a builder module."""

    name: str  # the backend name ``tree.backend`` reports
    label: str  # the matrix column: "torch", "keras-jax", "flax-nnx"
    version: str  # the framework's version, for the report
    names: dict[str, str]  # native class names for the picture: "sequential", "dense", "relu"
    can_tie: bool  # whether ``tree.tie`` shares natively (False: it raises UnsupportedError)
    deck_layers: tuple[int, int]  # positions of the deck model's two dense layers

    def devices(self) -> list[str]:
        """Every device the framework sees here: "cpu" first, then "cuda:0", "gpu:0", ..."""

    def deck_mlp(self, device: str, X: np.ndarray, *, seed: int = 0) -> Model:
        """The deck's toy model exactly as the deck writes it on this framework (4 -> 8, ReLU,
        8 -> 1), after its first call on ``X`` (2, 4) float32."""

    def mlp(self, device: str, X: np.ndarray, *, seed: int = 0) -> Model:
        """dense(8), ReLU, dense(1) as three layers, called on ``X``: the deck's picture, with
        its dense layers at paths 0 and 2 on every backend."""

    def deck_tied(
        self, device: str, X: np.ndarray, tied: bool = True, *, seed: int = 0
    ) -> tuple[Model, tuple[int, int]]:
        """The deck's shared-layer model and the two positions of the shared layer, called on
        ``X``; ``tied=False``: two separate layers there."""

    def wrap(self, model: Model) -> ut.ParamTree:
        """``ut.wrap(model)`` (flax linen: the module and its variables)."""

    def forward(self, tree: ut.ParamTree, X: np.ndarray) -> np.ndarray:
        """The wrapped deck model's output (2, 1) on ``X`` (2, 4), as numpy, run natively."""

    def loss(self, y: Any) -> Any:
        """The sum of the native output ``y``: a native scalar to differentiate."""

    def native_value(self, tree: ut.ParamTree, i: int, leaf: str) -> np.ndarray:
        """The canonical value (torch's layout: weight (out, in)) of leaf "weight" or "bias"
        of layer ``i``, read with the framework's own API."""

    def is_parameter(self, obj: object) -> bool:
        """Whether ``obj`` is the framework's parameter type."""

    def is_tensor(self, obj: object) -> bool:
        """Whether ``obj`` is the framework's tensor type (the data inside a parameter)."""

    def port_model(self, device: str, *, seed: int = 0) -> Model:
        """The port model above, built with the framework's own random init, with random
        batch-norm running statistics set through the framework's API, ready for inference."""

    def port_forward(self, tree: ut.ParamTree, X: np.ndarray) -> np.ndarray:
        """The port model's output (2, 3) float32 on the int tokens ``X`` (2, 6), in inference
        mode (batch norm uses its running statistics), run natively."""

    def random_model(self, spec: tuple, device: str, *, seed: int = 0) -> Model:
        """The random architecture ``spec`` of ``tests/safety/test_random_models.py``, built
        natively at the same paths on every backend, with random values drawn from ``seed``."""

    def native_state(self, tree: ut.ParamTree) -> dict[str, tuple[int, np.ndarray]]:
        """The framework's own view of every parameter and buffer: {name: (identity of its
        native object, a copy of its value)}, what "unchanged" compares."""


# The Protocol's members, in the order above: its attributes, then its functions.
MEMBERS = (*Builder.__annotations__, *(n for n in vars(Builder) if not n.startswith("_")))
