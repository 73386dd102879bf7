"""The model MLflow logs and serves: a pyfunc around a ``model.pt`` checkpoint.

Logged as an MLflow *model from code* (this file, the checkpoint as an artifact, the ``pipeline``
package as code): no ``torch.export`` and no pickled module, so logging takes a fraction of a second
and loading executes no pickle (:func:`pipeline.models.load_checkpoint` reads weights only). Input: a
recording table in the ingest schema, raw units (:func:`pipeline.predict.table_columns`; ``label``
optional and ignored); output: one row per trial, the predicted emotion and each emotion's probability.
It runs :func:`pipeline.predict.predict_table`, the code of ``pipeline.predict``: normalized inside as in
training. An input that cannot be right is refused with one line (over REST: a 400 whose message ends in
it).
"""

import mlflow


class CheckpointModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from pipeline.models import load_checkpoint, resolve_device

        network, self.checkpoint = load_checkpoint(context.artifacts["checkpoint"])
        self.device = resolve_device("auto")                 # a GPU when the serving machine has one
        self.network = network.to(self.device).eval()

    def predict(self, context, model_input, params=None):   # the signature has checked the columns' types
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from pipeline.errors import UserError
        from pipeline.predict import predict_table

        try:
            return predict_table(self.network, self.checkpoint, model_input, self.device)
        except UserError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None


mlflow.models.set_model(CheckpointModel())
