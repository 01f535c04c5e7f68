"""`python -m edgekit` runs the same command line as the `edgekit` script."""
from edgekit.cli import main

main()
