"""Cohort replay: what a pinned model version would have said about past patients, at the time,
and how good it would have been.

    pin the model(s) -> open the cohort -> per chunk: validate -> score (-> explain) -> write
    -> drift against the training reference -> evaluation and what would have happened
    -> side-by-side comparison -> report, metrics, manifest

- **Pinned.** `NAME@ALIAS` or `NAME/VERSION` is resolved once, at the start, to a version number;
  the manifest records name, version, run id, the booster's SHA-256 and the catalogue version.
- **As of the index date.** A long cohort (lab results + index events) goes through the as-of
  selection (`training.cohorts.reader`, `training.cohorts.asof`): per event and analyte, the
  latest result within the window before the index date, never one on or after it.
- **Nothing dropped.** Every cohort row gets one output row per model: `scored` (probability,
  band, warning codes) or `ineligible` with its coded reasons (`code:field`, e.g.
  `missing_required_panel:fbc`). A model that needs the pathway refuses a missing or unknown one
  as the API does (`missing_pathway`, `invalid_pathway`), and a row outside the spec's pathways
  is `outside_population:pathway` (training's population). The exclusion summary counts
  ineligible rows by code.
- **The API's numbers.** Rows go through `models.scoring.score_frame` (the model's column map,
  catalogue and eligibility, routing, probability, band, warnings, contributions): the
  vectorised twin of `TriagePredictor.score`, the per-request path of the HTTP API (tested
  equal exactly).
- **Scale.** A wide Parquet cohort is streamed in chunks (`ParquetFile.iter_batches`) and the
  scores are written chunk by chunk (`ParquetWriter`), so memory stays flat whatever the size;
  what is kept across chunks is small (bin counts for drift, tallies) plus, for the evaluation,
  a slim frame of the scored rows (ids, date, outcome, probability, band, subgroups). A long
  cohort is loaded whole for the as-of join, then scored in chunks. CSV is read in chunks.
- **Deterministic.** Score rows follow the cohort's order; the Parquet files carry no timestamps
  (timings go to the manifest only), so replaying twice gives byte-identical score files.

Modules: `options` (what to replay, the pinned models), `chunks` (one chunk through one model,
as score rows), `summaries` (what a pass keeps), `local` and `spark` (the engines), `outcomes`
(what would have happened, evaluation, side by side), `outputs` (report, metrics, manifest) and
`run` (the orchestrator). The Spark engine runs the same `score_chunk` per partition.
"""
