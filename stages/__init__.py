"""Fashion-MNIST (or any IDX dataset) pipeline stages; run each as `python -m stages.<name>` from dvc.yaml."""
