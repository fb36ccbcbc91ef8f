"""One module per backend, each defining every name of ``conformance.builder.Builder`` (the
contract, with the seed rule and the port model; ``torch.py`` is the template)."""

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
