"""traffic application."""
