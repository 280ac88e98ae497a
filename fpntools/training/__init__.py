"""Training utilities shared by the model zoo and the applications."""

from fpntools.training.checkpoint import CheckpointError, atomic_write, atomic_write_bytes, load_checkpoint, save_checkpoint

__all__ = ["CheckpointError", "atomic_write", "atomic_write_bytes", "load_checkpoint", "save_checkpoint"]
