"""The one place edgetl's version is written: pyproject.toml reads it (`dynamic = ["version"]`), and so does
every file edgetl writes that records which edgetl wrote it."""

__version__ = "0.1.0"
