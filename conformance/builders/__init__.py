"""One module per backend, each defining the same names (see ``torch.py`` for the template).

A builder is thin: it builds the deck's models natively, exactly as the deck
does on that framework, runs them, and reads a value back through the
framework's own API, so the cases can check unitree against the framework.

    name: str                                   the backend name ``tree.backend`` reports
    label: str                                  the matrix column: "torch", "keras-jax", "flax-nnx"
    version: str                                the framework's version, for the report
    names: dict[str, str]                       native class names for the picture
    can_tie: bool                               whether ``tree.tie`` shares natively (False: it
                                                must raise unitree.UnsupportedError saying why)
    devices() -> list[str]                      every device the framework sees here
    deck_mlp(device, X, *, seed=0) -> model     the deck's toy model exactly as the deck writes it
                                                on this framework, after its first call on X
    deck_layers: tuple[int, int]                positions of that model's two dense layers
    mlp(device, X, *, seed=0) -> model          dense(8), ReLU, dense(1) as three layers, called
                                                on X: the deck's picture, paths 0 and 2 everywhere
    deck_tied(device, X, tied=True, *, seed=0) -> (model, (i, j))
                                                the deck's shared-layer model and the two positions
                                                of the shared layer; tied=False: separate layers
    wrap(model) -> ParamTree                    ut.wrap(model) (flax linen: module and variables)
    forward(tree, X) -> np.ndarray              the wrapped model's output as numpy, run natively
    loss(y) -> native scalar                    the sum of the native output
    native_value(tree, i, leaf) -> np.ndarray   canonical value of leaf "weight"/"bias" of layer i,
                                                read with the framework's own API
    is_parameter(obj), is_tensor(obj) -> bool   the framework's parameter and tensor types

Every function that builds a model takes a keyword ``seed`` and draws every random value of
that build from it: the framework's own random state is seeded for the build (torch inside
``torch.random.fork_rng``, so the caller's generator is left as it was; Keras through
``keras.utils.set_random_seed``; Gluon through ``mx.random.seed``; Flax through keys and
``nnx.Rngs`` made from the seed), and numpy generators are ``default_rng(seed)``. The same
call with the same seed builds the same values, on every run and whatever ran before it;
a case that needs two models with other values (a model to load or port into, beside the
one it came from) passes other seeds.

The port matrix (``cases.port``, ``port_save`` and ``port_load``) adds two names:

    port_model(device, *, seed=0) -> model      the port model below, built natively with the
                                                framework's own random init, and with random
                                                batch-norm running statistics set through the
                                                framework's API, ready for inference
    port_forward(tree, X) -> np.ndarray         its output (2, 3) float32 on the int tokens X
                                                (2, 6), in inference mode (batch norm uses its
                                                running statistics), run natively

The port model is the same function on every backend, with the same paths:

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

The safety tests (``tests/safety``) add two more:

    native_state(tree) -> {name: (id, array)}   the framework's own view of every parameter and
                                                buffer: the identity of its native object and a
                                                copy of its value (what "unchanged" compares)
    random_model(spec, device, *, seed=0) -> model
                                                the random architecture ``spec`` (see
                                                ``tests/safety/test_random_models.py``), built
                                                natively at the same paths on every backend,
                                                with random values drawn from ``seed``
"""

# A random architecture with every kind of layer: conv, batch norms over channels and over
# features, flatten, dense, layer norm, and the dense layer at 5 used again at 7 (a tie).
RICH = (
    (2, 3, 5),
    (
        ("conv", 3, 4, 2, 1),
        ("bn", 4, 1),
        ("flatten",),
        ("dense", 16, 6),
        ("ln", 6),
        ("dense", 6, 6),
        ("bn", 6, 0),
        ("tie", 5),
        ("dense", 6, 2),
    ),
)
