"""The MLflow pyfunc face of a TriagePredictor, logged as "models from code" (nothing pickled).

`mlflow.pyfunc.load_model` and `mlflow models serve` use it. Input: one row per patient with
canonical analyte values named by catalogue code, `age`, `sex` (and `pathway` for models with that
context). Output: `probability`, `band` and `status` ("scored", or the error codes that made the row
ineligible; such rows get no probability).
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext


class TriagePyfunc(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        from models.predictor import TriagePredictor

        self.predictor = TriagePredictor.load(context.artifacts["predictor"])

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        from models.validation import validate_frame

        frame = model_input.reset_index(drop=True)
        spec = self.predictor.spec
        checked = validate_frame(frame, catalogue=spec.catalogue, eligibility=spec.eligibility)
        values = checked.values
        if "pathway" in frame:
            values["pathway"] = frame["pathway"].to_numpy(dtype=object)
        out = pd.DataFrame(
            {"probability": np.nan, "band": None, "status": "scored"}, index=frame.index
        )
        eligible = checked.eligible
        if eligible.any():
            scored = self.predictor.predict(values.loc[eligible])
            out.loc[eligible, "probability"] = scored["probability"].to_numpy()
            out.loc[eligible, "band"] = scored["band"].to_numpy()
        errors = checked.issues[checked.issues["severity"] == "error"]
        reasons = errors.groupby("row")["code"].agg(lambda c: ",".join(sorted(set(c))))
        out.loc[reasons.index, "status"] = reasons.to_numpy()
        return out


mlflow.models.set_model(TriagePyfunc())
