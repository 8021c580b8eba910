"""cardserver: every Metaflow card, live in the browser."""

__version__ = "0.1.0"
