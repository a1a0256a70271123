"""`python -m tftrain` runs the CLI (the MLproject entry points call it this way)."""

from tftrain.cli import main

main()
