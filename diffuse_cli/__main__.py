"""`python -m diffuse_cli ...`, also under `accelerate launch -m diffuse_cli train ...`."""

from diffuse_cli.cli import main

main()
