"""MLflow: a stage's run, its pipeline's parent run and lineage, the model registry. Nothing here changes what a
stage writes, so no stage depends on this code in dvc.yaml."""
