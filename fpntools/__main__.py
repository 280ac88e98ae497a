"""``python -m fpntools`` runs the console command."""

from fpntools.cli import main

main()
