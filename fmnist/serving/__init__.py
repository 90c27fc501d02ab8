"""The registered MLflow model: input conversion and the pyfunc, logged with fmnist.model as its only code."""
