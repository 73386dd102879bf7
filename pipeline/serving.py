"""The model MLflow logs and serves: a pyfunc around a ``model.pt`` checkpoint.

Logged as an MLflow *model from code* (this file, the checkpoint as an artifact, the ``pipeline``
package as code): no ``torch.export`` and no pickled module, so logging takes a fraction of a second
and loading executes no pickle (:func:`pipeline.model.load_checkpoint` reads weights only). Input: one
float32 batch (B, L, serving width) packed as :class:`pipeline.models.PackedInput` describes; output: the
class probabilities (B, C).
"""

import mlflow
import numpy as np


class CheckpointModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from pipeline.models import PackedInput, load_checkpoint, resolve_device

        self.checkpoint = context.artifacts["checkpoint"]     # pipeline.predict reads it directly
        network, checkpoint = load_checkpoint(self.checkpoint)
        self.device = resolve_device("auto")                 # a GPU when the serving machine has one
        self.model = PackedInput(network, checkpoint["spec"]).to(self.device).eval()

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:   # the signature validates
        import torch

        with torch.no_grad():
            batch = torch.from_numpy(np.asarray(model_input, dtype=np.float32)).to(self.device)
            return self.model(batch).cpu().numpy()


mlflow.models.set_model(CheckpointModel())
