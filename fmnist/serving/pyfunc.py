"""models/ensemble.pt as an MLflow pyfunc model: uint8 images in, a DataFrame of class and probabilities out.

Logged as a "model from code" (fmnist.tracking.registry.log_ensemble_model passes this file's path): MLflow stores
this source with fmnist.model and fmnist.serving beside it, and runs it when the model is loaded; the weights come
from the ensemble.pt artifact, which loads with torch.load(weights_only=True).
"""
from __future__ import annotations

import mlflow.models
import mlflow.pyfunc

from fmnist.model.ensemble import Ensemble
from fmnist.serving.inputs import as_images, prediction_frame


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """MLflow's view of models/ensemble.pt."""

    # The signature comes from an input example; without this MLflow warns that predict() has no type hints.
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.ensemble = Ensemble.load(context.artifacts["ensemble"])

    def predict(self, context, model_input, params=None):
        images = as_images(model_input, tuple(self.ensemble.image_shape))
        return prediction_frame(self.ensemble.predict_proba(images), self.ensemble.classes)


mlflow.models.set_model(EnsembleModel())
