"""`python -m fmnist.cli`: the same as the `fmnist` command."""
from fmnist.cli.main import main

main()
