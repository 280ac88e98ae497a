"""games application."""
