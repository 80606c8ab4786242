"""The MLflow pyfunc face of a TriagePredictor, logged as "models from code" (nothing pickled).

`mlflow.pyfunc.load_model` and `mlflow models serve` use it. Input: one row per patient with
analyte values named by catalogue code in canonical units, `age`, `sex` (and `pathway` for models
that need it), or, for a spec with a `column_map`, the cohort's own column names, units and codes
(the logged signature names them). Rows go through `models.scoring.score_frame`, the
frame scorer replay uses, so the pyfunc refuses exactly what replay refuses (pathway refusals
included). Output: `probability`, `band` and `status` ("scored", or the error codes that made the
row ineligible, comma-separated; such rows get no probability).
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
        from models.scoring import score_frame
        from models.triage import BANDS

        frame = model_input.reset_index(drop=True)
        scored = score_frame(self.predictor, frame)
        out = pd.DataFrame(
            {"probability": np.nan, "band": None, "status": "scored"}, index=frame.index
        )
        eligible = scored.eligible
        if eligible.any():
            out.loc[eligible, "probability"] = scored.probability[eligible]
            bands = np.asarray(BANDS, dtype=object)[scored.band_codes[eligible]]
            out.loc[eligible, "band"] = bands
        if len(scored.reason_rows):
            reasons = (
                scored.reason_codes().groupby("row")["code"].agg(lambda c: ",".join(sorted(c)))
            )
            out.loc[reasons.index, "status"] = reasons.to_numpy()
        return out


mlflow.models.set_model(TriagePyfunc())
