"""`python -m seersim` runs the CLI (same as the `seersim` console script)."""

from seersim.cli import main

main()
