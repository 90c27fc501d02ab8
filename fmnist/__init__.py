"""The pipeline's library: what the stages in stages/ call, one subpackage per concern. Nothing here reads
dvc.yaml's paths or decides what a stage writes; the stages do."""
