"""imaging application."""
