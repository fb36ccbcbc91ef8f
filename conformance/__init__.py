"""The deck's examples as backend-neutral cases, rerun on every backend and device.

``cases.py`` holds the cases, written once against the public API;
``builders/<backend>.py`` builds the deck's models natively, as the deck does
on that framework, each with every name of ``builder.Builder``; ``backends.py``
picks the backends (``UNITREE_BACKENDS``); ``matrix.py`` runs everything and
draws the case x backend x device matrix that ``unitree conformance`` prints.
Shipped in the wheel as ``unitree.conformance``.
"""
