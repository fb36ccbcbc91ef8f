"""One module per backend, each defining the same names (see ``torch.py`` for the template).

A builder is thin: it builds the deck's models natively, exactly as the deck
does on that framework, runs them, and reads a value back through the
framework's own API, so the cases can check unitree against the framework.

    name: str                                   the backend name ``ut.wrap(...).backend`` reports
    version: str                                the framework's version, for the report
    names: dict[str, str]                       native class names for the picture
    devices() -> list[str]                      every device the framework sees here
    deck_mlp(device, X) -> model                Dense(8), ReLU, Dense(1), after its first call on X
    deck_tied(device, X, tied=True) -> (model, (i, j))
                                                the deck's shared-layer model and the two positions
                                                of the shared layer; tied=False: separate layers
    forward(model, X) -> np.ndarray             the model's output as numpy
    loss(y) -> native scalar                    the sum of the native output
    native_value(model, i, leaf) -> np.ndarray  canonical value of leaf "weight"/"bias" of layer i,
                                                read with the framework's own API
    is_parameter(obj), is_tensor(obj) -> bool   the framework's parameter and tensor types
"""
