"""One adapter per framework, each imported on first use by ``unitree._adapter``."""
