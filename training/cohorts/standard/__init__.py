"""Cohorts from standard sources, in and out: an OMOP CDM v5.4 instance (`omop_import`,
`omop_export`) and a FHIR Bulk Data export (`fhir_bulk_import`, `fhir_bulk_export`).

Both importers end in the same place: a long cohort folder that every command reads like any
other (`training.cohorts.reader`), built by one set of rules (`index_events.build_index`: age,
sex, outcome within the horizon, follow-up, the index lab), with a manifest naming the source,
its hash, the rules and the rows excluded at each step (`manifest`). The concept sets that decide
what counts as an index event and as a cancer are data (`data/*.csv`, `concept_sets`).
"""

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

INDEX_FILE = "cohort_index.parquet"
RESULTS_FILE = "cohort_results.parquet"


class SourceError(ValueError):
    """A standard source that cannot be imported as it is (a table or column missing, an
    unreadable file or database): the message names what and where."""


def check_time_zone(time_zone: str) -> None:
    """SourceError unless `time_zone` is an IANA time zone name."""
    try:
        ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SourceError(f"unknown_time_zone: {time_zone!r} is not an IANA time zone") from None
