"""The HTTP scoring service (FastAPI). Imports ``model`` only."""
