"""`triage monitor` over an audit store written the way the server writes it (`AuditStore` and
`AuditRecord`, the predictor's own scores): exit statuses a scheduler can page on, alerts that
fire on an injected change and only there, a window without requests, bad outcome files, and
patient references that never reach an output in clear."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from models.analytes import CATALOGUE
from serving.audit import AuditRecord, AuditStore, pseudonymise
from tests.serving.audit_support import fresh_postgres, postgres_url
from tests.serving.conftest import Released
from training.cli import app
from training.monitor.outcomes import OutcomesError, read_outcomes

MODEL = "lower_gi"
HMAC_KEY = "monitor-cli-hmac-0a9e"
runner = CliRunner()


def record_of(row: pd.Series, hb_factor: float = 1.0) -> dict[str, Any]:
    analytes = {}
    for analyte in CATALOGUE:
        if analyte.code in row and not pd.isna(row[analyte.code]):
            unit = str(row.get(f"{analyte.code}_unit") or analyte.unit)
            factor = hb_factor if analyte.code == "haemoglobin" else 1.0
            analytes[analyte.code] = {"value": float(row[analyte.code]) * factor, "unit": unit}
    return {"age": int(row["age"]), "sex": row["sex"], "analytes": analytes}


def write_store(url: str, released: Released, days: list[tuple[date, float]], n: int) -> None:
    """`n` lower-GI referrals audited on each of `days` (haemoglobin times the day's factor),
    scored or refused by the released predictor as the server would."""
    predictor = released.results[MODEL].predictor
    cohort = released.cohort
    rows = cohort.loc[cohort["pathway"] == MODEL].head(n)
    store = AuditStore(url, HMAC_KEY)
    try:
        records = []
        for day, factor in days:
            stamp = datetime(day.year, day.month, day.day, 12, tzinfo=UTC).isoformat()
            for i, (_, row) in enumerate(rows.iterrows()):
                record = record_of(row, factor)
                score = predictor.score(record, pathway=MODEL)
                common: dict[str, Any] = {
                    "request_id": f"{day}-{i}", "endpoint": "score", "received_at": stamp,
                    "request": {"record": record, "pathway": MODEL}, "model_name": MODEL,
                    "model_version": "1", "response": "{}", "warnings": [
                        issue.code for issue in score.issues if issue.severity == "warning"],
                    "patient_pseudonym": pseudonymise(f"patient-{row['patient_id']}", HMAC_KEY),
                }  # fmt: skip
                if score.eligible:
                    records.append(AuditRecord.build(
                        outcome="scored", inputs=score.values, probability=score.probability,
                        band=score.band, base=score.base, contributions=score.contributions,
                        **common))  # fmt: skip
                else:
                    codes = [i.code for i in score.issues if i.severity == "error"]
                    refused = ["ineligible", *codes]
                    records.append(
                        AuditRecord.build(outcome="refused", reason_codes=refused, **common)
                    )
        store.write(records)
    finally:
        store.close()


def invoke(tmp: Path, released: Released, url: str, *extra: str) -> Any:
    env = {"TRIAGE_HMAC_KEY": HMAC_KEY}
    return runner.invoke(app, ["monitor", "--model", MODEL, "--out", str(tmp / "out"),
                               "--audit-url", url, "--workdir", str(tmp / "var"),
                               "--tracking-uri", released.tracking.uri, "--n-boot", "20",
                               *extra], env=env)  # fmt: skip


@pytest.fixture(scope="module")
def stores(released: Released, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("monitor-stores")
    steady = f"sqlite:///{root / 'steady.db'}"
    shifted = f"sqlite:///{root / 'shifted.db'}"
    write_store(steady, released, [(date(2026, 9, 14), 1.0), (date(2026, 10, 12), 1.0)], 400)
    write_store(shifted, released, [(date(2026, 9, 14), 1.0), (date(2026, 10, 12), 0.75)], 400)
    return {"steady": steady, "shifted": shifted}


def test_a_steady_service_raises_no_alert(
    stores: dict[str, str], released: Released, tmp_path: Path
) -> None:
    result = invoke(tmp_path, released, stores["steady"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "monitor.json").read_text())
    assert report["requests"] == 800 and not [a for a in report["alerts"] if a["fired"]]
    weeks = {row["week"] for row in report["weekly"]}
    assert weeks == {"2026-09-14", "2026-10-12"}  # Mondays
    assert "<img" in (tmp_path / "out" / "monitor.html").read_text()


def test_injected_drift_fires_where_it_was_injected_and_exits_1(
    stores: dict[str, str], released: Released, tmp_path: Path
) -> None:
    result = invoke(tmp_path, released, stores["shifted"])
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "out" / "monitor.json").read_text())
    fired = [a for a in report["alerts"] if a["fired"]]
    drifted = {(a["feature"], a["period"]) for a in fired if a["check"] == "input drift"}
    assert ("haemoglobin", "2026-10") in drifted
    assert all(period != "2026-09" for _, period in drifted), drifted
    derived = {d.name for d in released.results[MODEL].spec.derived}
    assert {feature for feature, _ in drifted} <= {"haemoglobin", *derived}, drifted


def test_a_window_without_requests_says_so_and_exits_3(
    stores: dict[str, str], released: Released, tmp_path: Path
) -> None:
    result = invoke(tmp_path, released, stores["steady"], "--from", "2027-01-01")
    assert result.exit_code == 3, result.output
    assert "nothing audited" in result.output
    report = json.loads((tmp_path / "out" / "monitor.json").read_text())
    assert report["nothing_audited"] and "2027-01-01" in report["reason"]


def test_an_outcomes_file_with_an_unknown_column_is_refused(
    stores: dict[str, str], released: Released, tmp_path: Path
) -> None:
    path = tmp_path / "outcomes.csv"
    path.write_text("patient_reference,diagnosis_date,site,nhs_number\np1,2026-10-01,lung,943\n")
    result = invoke(tmp_path, released, stores["steady"], "--outcomes", str(path))
    assert result.exit_code == 2, result.output
    assert "nhs_number" in result.output and "nothing is ignored silently" in result.output


def test_linked_outcomes_never_leave_a_reference_in_clear(
    stores: dict[str, str], released: Released, tmp_path: Path
) -> None:
    cohort = released.cohort
    rows = cohort.loc[cohort["pathway"] == MODEL].head(400)
    references = [f"patient-{p}" for p in rows["patient_id"]]
    frame = pd.DataFrame({"patient_reference": references, "diagnosis_date": "2026-10-20",
                          "site": "colorectal"})  # fmt: skip
    frame.to_csv(tmp_path / "outcomes.csv", index=False)
    result = invoke(tmp_path, released, stores["steady"], "--outcomes",
                    str(tmp_path / "outcomes.csv"), "--follow-up-end", "2026-11-30")  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    report = json.loads((tmp_path / "out" / "monitor.json").read_text())
    predictor = released.results[MODEL].predictor
    scored = {f"patient-{row['patient_id']}" for _, row in rows.iterrows()
              if predictor.score(record_of(row), pathway=MODEL).eligible}  # fmt: skip
    assert report["outcomes"]["used"] == len(scored) < len(references)
    assert report["outcomes"]["excluded"]["no_audited_score"] == len(references) - len(scored)
    assert report["outcomes"]["scores_elapsed"] == 0 < report["outcomes"]["scores_open"]
    text = (tmp_path / "out" / "monitor.json").read_text()
    text += (tmp_path / "out" / "monitor.html").read_text() + result.output
    assert not [r for r in references if r in text]


def test_outcome_rows_are_read_as_registries_send_them(tmp_path: Path) -> None:
    """Every row is kept or counted under one reason; aware timestamps become local days."""
    path = tmp_path / "outcomes.csv"
    path.write_text(
        "patient_reference,diagnosis_date,site\n"
        "a,2016-03-01T23:30:00-05:00,lung\n"  # 04:30 on 2 March in London
        "b,2016-03-02T00:30:00+14:00,lung\n"  # 10:30 on 1 March in London
        "c,2016,lung\n"
        "d,2016-05,lung\n"
        "e,31/12/2016,lung\n"
        "f,2016-02-30,lung\n"
        ",2016-03-01,lung\n"
        "g,2030-01-01,lung\n"
        "h,2016-04-04,\n"
        "h,2016-04-04,\n"
    )
    outcomes = read_outcomes(path, HMAC_KEY, date(2026, 1, 1), "Europe/London")
    assert outcomes.counts() == {
        "missing_reference": 1, "unparseable_date": 2, "imprecise_date": 2,
        "after_follow_up_end": 1, "duplicate": 1, "no_audited_score": 0,
    }  # fmt: skip
    days = dict(zip(outcomes.frame["patient_pseudonym"], outcomes.frame["diagnosis_date"],
                    strict=True))  # fmt: skip
    assert days[pseudonymise("a", HMAC_KEY)] == pd.Timestamp("2016-03-02")
    assert days[pseudonymise("b", HMAC_KEY)] == pd.Timestamp("2016-03-01")
    assert len(outcomes.frame) == 3 and outcomes.rows == 10
    assert outcomes.examples["imprecise_date"] == [3, 4]


def test_an_outcomes_file_missing_a_column_names_it(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.csv"
    path.write_text("patient,diagnosis_date\np1,2016-01-01\n")
    with pytest.raises(OutcomesError, match=r"unknown column.*patient.*missing.*patient_reference"):
        read_outcomes(path, HMAC_KEY, date(2026, 1, 1), "Europe/London")


def test_a_postgresql_store_gives_the_same_report(
    stores: dict[str, str], released: Released, tmp_path: Path
) -> None:
    """The store of several servers: the same rows in PostgreSQL, the same monitor.json."""
    with fresh_postgres(postgres_url()) as url:
        write_store(url, released, [(date(2026, 9, 14), 1.0), (date(2026, 10, 12), 1.0)], 400)
        on_postgres = invoke(tmp_path / "pg", released, url)
    on_sqlite = invoke(tmp_path / "sqlite", released, stores["steady"])
    assert on_postgres.exit_code == on_sqlite.exit_code == 0, on_postgres.output
    reports = [json.loads((tmp_path / kind / "out" / "monitor.json").read_text())
               for kind in ("pg", "sqlite")]  # fmt: skip
    for report in reports:
        assert report.pop("audit_store")
    assert reports[0] == reports[1]


def test_outcomes_need_the_servers_own_key(
    stores: dict[str, str], released: Released, tmp_path: Path
) -> None:
    """Another key would pseudonymise nothing the server wrote: every outcome would fail to
    link. The newest row's MAC tells, so the run stops and says why (and makes no key file)."""
    path = tmp_path / "outcomes.csv"
    path.write_text("patient_reference,diagnosis_date,site\npatient-1,2026-10-01,lung\n")
    arguments = ["monitor", "--model", MODEL, "--out", str(tmp_path / "out"), "--audit-url",
                 stores["steady"], "--workdir", str(tmp_path / "var"), "--tracking-uri",
                 released.tracking.uri, "--outcomes", str(path)]  # fmt: skip
    wrong = runner.invoke(app, arguments, env={"TRIAGE_HMAC_KEY": "not-the-servers-key"})
    assert wrong.exit_code == 2 and "does not verify" in wrong.output, wrong.output
    none = runner.invoke(app, arguments, env={"TRIAGE_HMAC_KEY": ""})
    assert none.exit_code == 2 and "no HMAC key" in none.output, none.output
    assert not (tmp_path / "var" / "serving" / "hmac.key").exists()
    assert not (tmp_path / "out" / "monitor.json").exists()
