"""The repository's scripts, importable from its root (`from scripts import loadtest`) so the
tests can exercise their parts; each also runs on its own (`python scripts/NAME.py`)."""
