"""The serving backend: a FastAPI app beside the CLI that serves what a stage's alias names."""
