"""The `fmnist` command (fmnist.cli.main): the tools that are not pipeline stages, one module per verb."""
