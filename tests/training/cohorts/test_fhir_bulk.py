"""FHIR Bulk Data in and out (`fhir_bulk_export`, `fhir_bulk_import`): a simulated cohort exported
as Flat FHIR NDJSON and imported back replays to exactly the same scores; hand-written NDJSON in
the shapes EHRs send (fixtures/fhir_bulk_awkward) gives the rows and counts worked out by hand
below; a large Observation file is read in constant memory; the command line refuses an empty
folder with a coded message."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from fhir.resources.R4B import get_fhir_model_class
from typer.testing import CliRunner

import training.cli.cohort_fhir  # noqa: F401  (registers `triage cohort from-fhir-bulk`)
from tests.training.cohorts.round_trip import (
    HORIZON_DAYS,
    check_outcomes,
    check_same_scores,
    primary_loinc,
    simulated_with_awkward_cases,
)
from tests.training.pinning import pinned
from training.cli import app
from training.cohorts.standard import INDEX_FILE, RESULTS_FILE, SourceError
from training.cohorts.standard import fhir_bulk_import as bulk_import
from training.cohorts.standard.fhir_bulk_export import write_fhir_bulk
from training.cohorts.standard.fhir_bulk_import import import_fhir_bulk
from training.cohorts.standard.index_events import birth_dates
from training.cohorts.standard.manifest import file_sha256
from training.fit.train import TrainResult

AWKWARD = Path(__file__).parent / "fixtures" / "fhir_bulk_awkward"
runner = CliRunner()
T = pd.Timestamp


# --- the round trip -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulated_with_awkward_cases(tmp_path_factory.mktemp("native"), seed=31)


@pytest.fixture(scope="module")
def exported(native: Path) -> tuple[Path, dict[str, str]]:
    index = pd.read_parquet(native / "referrals_index.parquet")
    results = pd.read_parquet(native / "referrals_results.parquet")
    folder = native / "fhir-bulk"
    return folder, write_fhir_bulk(index, results, folder, horizon_days=HORIZON_DAYS)


@pytest.fixture(scope="module")
def imported(exported: tuple[Path, dict[str, str]], native: Path) -> dict[str, Any]:
    return import_fhir_bulk(exported[0], native / "imported", horizon_days=HORIZON_DAYS)


def test_the_export_is_valid_fhir_with_a_bulk_manifest(
    exported: tuple[Path, dict[str, str]], native: Path
) -> None:
    folder, files = exported
    assert files == {p.name: file_sha256(p) for p in folder.iterdir()}, "names and digests"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["requiresAccessToken"] is False and manifest["error"] == []
    index = pd.read_parquet(native / "referrals_index.parquet")
    last = pd.to_datetime(index["index_date"]).max() + timedelta(days=HORIZON_DAYS + 1)
    assert manifest["transactionTime"].startswith(last.strftime("%Y-%m-%dT00:00:00")), (
        "the follow-up end: the day after the last referral's horizon"
    )
    for output in manifest["output"]:
        lines = (folder / output["url"]).read_bytes().splitlines()
        assert len(lines) == output["count"] > 0, output
        model = get_fhir_model_class(output["type"])
        for line in lines[:: max(1, len(lines) // 300)]:  # ~300 of each type, spread out
            model.model_validate(orjson.loads(line))  # raises when not valid R4B


def test_birth_dates_give_every_referral_its_recorded_age(native: Path) -> None:
    index = pd.read_parquet(native / "referrals_index.parquet")
    birth = birth_dates(index).reindex(index["patient_id"]).dt.date.tolist()
    for born, day, age in zip(
        birth, pd.to_datetime(index["index_date"]).dt.date, index["age"], strict=True
    ):
        years = day.year - born.year - ((day.month, day.day) < (born.month, born.day))
        assert years == age, f"born {born}: {years} on {day}, not {age}"
    broken = index.head(2).assign(patient_id=1, age=[40, 70])
    with pytest.raises(ValueError, match="cannot come from one birth date"):
        birth_dates(broken)


def test_the_import_gives_back_the_native_results_row_by_row(
    imported: dict[str, Any], native: Path
) -> None:
    original = pd.read_parquet(native / "referrals_results.parquet")
    back = pd.read_parquet(native / "imported" / RESULTS_FILE)
    assert len(back) == len(original) == imported["counts"]["results"]
    loinc = {c: primary_loinc(c) for c in original["code"].astype(str).unique()}
    expected = original.assign(code=original["code"].astype(str).map(loinc))
    for column in ("patient_id", "sample_time", "code", "unit", "lab"):
        assert (back[column].astype(object) == expected[column].astype(object)).all(), column
    assert np.array_equal(back["value"].to_numpy(), original["value"].to_numpy()), (
        "values round-trip bit for bit through the JSON text"
    )


def test_outcomes_differ_only_where_a_later_referrals_cancer_falls_in_the_horizon(
    imported: dict[str, Any], native: Path
) -> None:
    check_outcomes(native, native / "imported", imported)


def test_replay_scores_equal_the_native_cohorts_exactly(
    imported: dict[str, Any],
    native: Path,
    any_cancer: TrainResult,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    model = pinned(any_cancer, tmp_path_factory.mktemp("pinned"))
    check_same_scores(native, native / "imported", model, tmp_path_factory)


# --- awkward hand-written NDJSON ----------------------------------------------------------------


@pytest.fixture(scope="module")
def awkward(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("awkward")
    return import_fhir_bulk(AWKWARD, out), out


def test_the_awkward_fixtures_are_valid_fhir_but_for_the_broken_line() -> None:
    broken = []
    for path in sorted(AWKWARD.glob("*.ndjson")):
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError:
                broken.append(f"{path.name}:{number}")
                continue
            get_fhir_model_class(data["resourceType"]).model_validate(data)
    assert broken == ["Observation.ndjson:12"]


def test_awkward_observations_are_kept_or_counted_by_the_fhir_routes_rules(
    awkward: tuple[dict[str, Any], Path],
) -> None:
    manifest, out = awkward
    counted = {
        r["reason"]: r["count"] for r in manifest["exclusions"] if r["step"] == "observations"
    }
    assert counted == {
        "no_id": 0, "no_subject": 1, "unknown_patient": 1, "withdrawn": 1,
        "status_not_final": 1, "unknown_code": 2, "no_value": 1, "comparator": 1,
        "undated": 0, "imprecise_date": 2, "no_unit": 1, "duplicate_id": 1,
    }  # fmt: skip
    lines = {r["reason"]: r["count"] for r in manifest["exclusions"] if r["step"] == "lines"}
    assert lines == {"invalid_json": 1, "other_resource_type": 1}
    assert manifest["counts"]["invalid_lines_sample"] == ["Observation.ndjson:12"]
    assert manifest["counts"]["Observation_read"] == 21, "23 lines: one broken, one a Patient"
    results = pd.read_parquet(out / RESULTS_FILE)
    expected = pd.DataFrame(
        [  # patient ids numbered in file order (p1 -> 1): the FHIR ids are not numbers
            (1, T("2019-03-20 10:00"), "718-7", 131.0, "g/L", "Lab X"),  # o1 (not its repeat)
            (2, T("2019-04-01 05:30"), "6690-2", 7.1, "10*9/L", None),  # 31 Mar 23:30 -05:00
            (2, T("2019-03-31 11:30"), "777-3", 250.0, "10*9/L", None),  # 1 Apr 00:30 +14:00
            (3, T("2019-04-20 00:00"), "14682-9", 88.0, "µmol/L", None),  # not UCUM: the text
            (1, T("2019-03-21 09:00"), "2951-2", 139.0, "mmol/L", None),  # period: its end
            (1, T("2019-03-22 12:00"), "3094-0", 14.0, "mg/dL", "zzz"),  # organization id
            (3, T("2019-04-21 08:00"), "718-7", 12.5, "g/dL", None),  # unit text only
            (3, T("2019-04-21 08:00"), "718-7", 12.9, "g/dL", "Lab X"),  # amended, after it
            (1, T("2019-03-19 09:00"), "718-7", 131.0, "furlongs", None),  # validation's job
        ],
        columns=["patient_id", "sample_time", "code", "value", "unit", "lab"],
    )
    pd.testing.assert_frame_equal(results.astype(object), expected.astype(object))


def test_awkward_people_referrals_and_cancers_give_the_index_worked_by_hand(
    awkward: tuple[dict[str, Any], Path],
) -> None:
    manifest, out = awkward
    counted = {(r["step"], r["reason"]): r["count"] for r in manifest["exclusions"] if r["count"]}
    assert counted == {
        ("lines", "invalid_json"): 1, ("lines", "other_resource_type"): 1,
        ("patients", "duplicate_id"): 1,  # p1 twice: the first (female, 1950) kept
        ("service_requests", "withdrawn"): 1, ("service_requests", "not_an_index_event"): 1,
        ("service_requests", "unknown_patient"): 1, ("service_requests", "imprecise_date"): 1,
        ("conditions", "refuted"): 1, ("conditions", "not_a_cancer"): 1,
        ("conditions", "imprecise_date"): 1,
        ("index_events", "unsupported_sex"): 1, ("index_events", "horizon_not_elapsed"): 1,
        **{("observations", r): n for r, n in [("no_subject", 1), ("unknown_patient", 1),
           ("withdrawn", 1), ("status_not_final", 1), ("unknown_code", 2), ("no_value", 1),
           ("comparator", 1), ("imprecise_date", 2), ("no_unit", 1), ("duplicate_id", 1)]},
    }  # fmt: skip
    index = pd.read_parquet(out / INDEX_FILE)
    columns = ["referral_id", "patient_id", "index_date", "pathway", "lab", "age", "sex",
               "cancer", "cancer_site", "diagnosis_date", "prior_cancer"]  # fmt: skip
    expected = pd.DataFrame(
        [
            # born 15 Jun 1950: 68 on 1 Apr 2019; C18.7 on 1 Jun; the latest lab before: zzz
            (1, 1, T("2019-04-01"), "lower_gi", "zzz", 68, "female", 1, "colorectal_left",
             T("2019-06-01"), False),
            # born "1960" -> 1 Jul 1960: 58; C61 at 23:30 -05:00 on 15 May is 16 May in London
            (2, 2, T("2019-04-10"), "lung", None, 58, "male", 1, "prostate",
             T("2019-05-16"), False),
            # born "1970-02" -> 15 Feb 1970: 49; C50.9 recorded 20 Apr: before, so prior only
            (3, 3, T("2019-05-01"), "haematological", "Lab X", 49, "male", 0, None, pd.NaT,
             True),
        ],
        columns=columns,
    )  # fmt: skip
    assert manifest["counts"]["followup_end"] == "2021-01-01", "the Bulk transactionTime"
    pd.testing.assert_frame_equal(index[columns].astype(object), expected.astype(object))


def test_a_duplicate_id_in_a_later_batch_is_still_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, awkward: tuple[dict[str, Any], Path]
) -> None:
    monkeypatch.setattr(bulk_import, "BATCH_ROWS", 1)  # every usable row a batch of its own
    manifest = import_fhir_bulk(AWKWARD, tmp_path)
    assert manifest["exclusions"] == awkward[0]["exclusions"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / RESULTS_FILE), pd.read_parquet(awkward[1] / RESULTS_FILE)
    )


def test_without_a_bulk_manifest_the_followup_end_must_be_given(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    for path in AWKWARD.glob("*.ndjson"):
        (folder / f"part-{path.name}").write_bytes(path.read_bytes())  # typed by content
    with pytest.raises(SourceError, match="no_followup_end"):
        import_fhir_bulk(folder, tmp_path / "out")
    manifest = import_fhir_bulk(folder, tmp_path / "out", followup_end=date(2020, 4, 9))
    elapsed = [r["count"] for r in manifest["exclusions"] if r["reason"] == "horizon_not_elapsed"]
    assert elapsed == [2], "sr3's (1 May 2019) and sr6's horizons end after 9 April; sr2's on it"
    assert manifest["counts"]["index_events"] == 2


# --- constant memory ----------------------------------------------------------------------------

PROBE = """
import re, sys, time
from datetime import date
from pathlib import Path
from training.cohorts.standard.fhir_bulk_import import import_fhir_bulk
started = time.perf_counter()
manifest = import_fhir_bulk(Path(sys.argv[1]), Path(sys.argv[2]), followup_end=date(2022, 1, 1))
elapsed = time.perf_counter() - started
status = Path("/proc/self/status").read_text()
peak = re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)
print(peak, manifest["counts"]["results"], elapsed)
"""  # VmHWM: this process's own peak RSS (ru_maxrss would include the forking test runner's)


def _write_export(folder: Path, observations: int, patients: int = 1_000) -> None:
    """`observations` Observations spread over `patients` people, each with one referral."""
    folder.mkdir()
    (folder / "Patient.ndjson").write_text(
        "".join(
            f'{{"resourceType":"Patient","id":"{p}","gender":"female","birthDate":"1960-05-05"}}\n'
            for p in range(patients)
        )
    )
    code = '{"coding":[{"system":"urn:triage:vocabulary:TriageReferral","code":"2WW-lung"}]}'
    (folder / "ServiceRequest.ndjson").write_text(
        "".join(
            f'{{"resourceType":"ServiceRequest","id":"{p}","status":"active","intent":"order",'
            f'"code":{code},"subject":{{"reference":"Patient/{p}"}},"authoredOn":"2020-06-01"}}\n'
            for p in range(patients)
        )
    )
    with (folder / "Observation.ndjson").open("w") as handle:
        for start in range(0, observations, 50_000):
            handle.write(
                "".join(
                    f'{{"resourceType":"Observation","id":"{i}","status":"final","code":{{"coding":'
                    f'[{{"system":"http://loinc.org","code":"718-7"}}]}},"subject":{{"reference":'
                    f'"Patient/{i % patients}"}},"effectiveDateTime":"2020-{1 + i % 5:02d}-'
                    f'{1 + i % 28:02d}T{i % 24:02d}:15:00+01:00","valueQuantity":{{"value":'
                    f'{100 + i % 70}.5,"unit":"g/L","system":"http://unitsofmeasure.org",'
                    f'"code":"g/L"}}}}\n'
                    for i in range(start, min(observations, start + 50_000))
                )
            )


def _peak_kib(folder: Path, out: Path) -> tuple[int, int, float]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(folder), str(out)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[3],
    )
    peak, rows, seconds = done.stdout.split()
    return int(peak), int(rows), float(seconds)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM")
def test_observations_are_streamed_in_constant_memory(tmp_path: Path) -> None:
    """Peak RSS importing 500,000 Observations is within 60 MB of importing 250,000 (both fill
    whole batches; measured: +18 MB); read as one batch, the 250,000 more took +195 MB."""
    small, large = tmp_path / "small", tmp_path / "large"
    _write_export(small, 250_000)
    _write_export(large, 500_000)
    small_peak, small_rows, _ = _peak_kib(small, tmp_path / "small-out")
    large_peak, large_rows, seconds = _peak_kib(large, tmp_path / "large-out")
    assert (small_rows, large_rows) == (250_000, 500_000), "every Observation imported"
    growth_mb = (large_peak - small_peak) / 1024
    assert growth_mb < 60, f"peak memory grew {growth_mb:.0f} MB for 250,000 more Observations"
    print(
        f"imported {large_rows / seconds:,.0f} Observations/s; peak {small_peak / 1024:.0f} "
        f"MB (250,000) and {large_peak / 1024:.0f} MB (500,000)"
    )


# --- the command line ---------------------------------------------------------------------------


def test_an_empty_folder_is_a_coded_user_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["cohort", "from-fhir-bulk", str(tmp_path), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: no_bulk_files:"), result.stderr
    assert not (tmp_path / "out").exists(), "nothing written"


def test_the_command_prints_counts_and_exclusions(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "cohort",
            "from-fhir-bulk",
            str(AWKWARD),
            "--out",
            str(tmp_path / "out"),
            "--followup-end",
            "2020-12-31",
        ],
    )
    assert result.exit_code == 0, result.output
    for text in ("index_events", "duplicate_id", "imprecise_date", "comparator", "2020-12-31"):
        assert text in result.stdout, text
    assert len(pd.read_parquet(tmp_path / "out" / INDEX_FILE)) == 3
    bad = runner.invoke(
        app,
        [
            "cohort",
            "from-fhir-bulk",
            str(AWKWARD),
            "--out",
            str(tmp_path / "x"),
            "--followup-end",
            "31/12/2020",
        ],
    )
    assert bad.exit_code == 2 and "invalid_followup_end" in bad.stderr
