"""spruce's version, importable without the package's lazy public names."""

__version__ = "0.1.0"
