"""ct application."""
