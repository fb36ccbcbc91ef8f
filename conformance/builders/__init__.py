"""One module per backend, each defining the same names (see ``torch.py`` for the template).

A builder is thin: it builds the deck's models natively, exactly as the deck
does on that framework, runs them, and reads a value back through the
framework's own API, so the cases can check unitree against the framework.

    name: str                                   the backend name ``tree.backend`` reports
    label: str                                  the matrix column: "torch", "keras-jax", "flax-nnx"
    version: str                                the framework's version, for the report
    names: dict[str, str]                       native class names for the picture
    can_tie: bool                               whether ``tree.tie`` shares natively (False: it
                                                must raise NotImplementedError saying why)
    devices() -> list[str]                      every device the framework sees here
    deck_mlp(device, X) -> model                the deck's toy model exactly as the deck writes it
                                                on this framework, after its first call on X
    deck_layers: tuple[int, int]                positions of that model's two dense layers
    mlp(device, X) -> model                     dense(8), ReLU, dense(1) as three layers, called
                                                on X: the deck's picture, paths 0 and 2 everywhere
    deck_tied(device, X, tied=True) -> (model, (i, j))
                                                the deck's shared-layer model and the two positions
                                                of the shared layer; tied=False: separate layers
    wrap(model) -> ParamTree                    ut.wrap(model) (flax linen: module and variables)
    forward(tree, X) -> np.ndarray              the wrapped model's output as numpy, run natively
    loss(y) -> native scalar                    the sum of the native output
    native_value(tree, i, leaf) -> np.ndarray   canonical value of leaf "weight"/"bias" of layer i,
                                                read with the framework's own API
    is_parameter(obj), is_tensor(obj) -> bool   the framework's parameter and tensor types
"""
