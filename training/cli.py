"""The `triage` command line: one typer command per workload, each parsing its options, calling
the wing that does the work (cohorts, fit, evaluation, registry, replay, serving) and printing
what it returned."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import typer
from rich.table import Table

from training.console import make_console, no_telemetry, use_bentoml_store

if TYPE_CHECKING:
    from training.cohorts.reader import Source

app = typer.Typer(
    help="Cancer early-diagnosis triage models: catalogue, cohorts, training, serving, replay.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """Cancer early-diagnosis triage models: catalogue, cohorts, training, serving, replay."""
    no_telemetry()  # no usage reports leave the machine


@app.command()
def analytes() -> None:
    """Print the analyte catalogue: codes, LOINC, units, reference intervals and hard limits."""
    from models.analytes import CATALOGUE

    table = Table(title=f"Analyte catalogue {CATALOGUE.version} ({len(CATALOGUE)} analytes)")
    for column in ("code", "name", "LOINC", "unit", "other units", "reference", "limits", "panel"):
        table.add_column(column)
    for a in CATALOGUE:
        reference = a.reference.describe()
        if a.reference_male and a.reference_female:
            reference = f"M {a.reference_male.describe()}, F {a.reference_female.describe()}"
        table.add_row(
            a.code,
            a.name,
            " ".join((a.loinc, *a.alt_loinc)),
            a.unit,
            ", ".join(a.alt_units) or "-",
            reference,
            a.limits.describe(),
            a.panel,
        )
    make_console().print(table)


@app.command()
def specs() -> None:
    """List the shipped model specs."""
    from models.spec import load_spec, spec_names

    table = Table(title="Model specs")
    for column in ("name", "title", "features", "eligibility", "split (train/cal/eval)"):
        table.add_column(column)
    for name in spec_names():
        spec = load_spec(name)
        s = spec.split
        table.add_row(
            name,
            spec.title,
            str(len(spec.features.names)),
            f"age {spec.eligibility.min_age:g}+, {', '.join(spec.eligibility.required_panels)}",
            f"{s.train.start.year}-{s.train.end.year} / {s.calibrate.start.year}-"
            f"{s.calibrate.end.year} / {s.evaluate.start.year}-{s.evaluate.end.year}",
        )
    make_console().print(table)


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="a wide cohort, CSV or Parquet")],
    spec: Annotated[
        str | None, typer.Option(help="spec name or path: column map and eligibility")
    ] = None,
    strict: Annotated[bool, typer.Option(help="exit non-zero when any error is found")] = False,
    issues_out: Annotated[
        Path | None, typer.Option("--issues-out", help="write every issue to this Parquet file")
    ] = None,
) -> None:
    """Validate a cohort through the catalogue and print issues by code and field."""
    from models.analytes import CATALOGUE
    from models.columns import map_columns
    from models.frame_validation import validate_frame
    from models.spec import load_spec
    from training.cohorts.reader import read_table

    frame = read_table(file)
    model_spec = load_spec(spec) if spec else None
    units: dict[str, str] = {}
    if model_spec is not None:
        frame, units = map_columns(frame, model_spec)
    result = validate_frame(
        frame,
        catalogue=model_spec.catalogue if model_spec else CATALOGUE,
        eligibility=model_spec.eligibility if model_spec else None,
        units=units,
    )
    summary = result.summary()
    table = Table(title=f"{file}: {len(frame):,} rows, {int(result.eligible.sum()):,} eligible")
    for column in ("severity", "code", "field", "rows"):
        table.add_column(column, justify="right" if column == "rows" else "left")
    for row in summary.to_dict("records"):
        style = "red" if row["severity"] == "error" else "yellow"
        table.add_row(
            str(row["severity"]),
            str(row["code"]),
            str(row["field"]),
            f"{row['count']:,}",
            style=style,
        )
    make_console().print(table if len(summary) else f"{file}: {len(frame):,} rows, no issues")
    if issues_out is not None:
        result.issues.to_parquet(issues_out, index=False)
    n_errors = int((result.issues["severity"] == "error").sum())
    if strict and n_errors:
        make_console().print(f"[red]{n_errors:,} errors[/red]")
        raise typer.Exit(code=1)


@app.command()
def simulate(
    cohort: Annotated[str, typer.Option(help="referrals | myeloma")] = "referrals",
    n: Annotated[
        int | None,
        typer.Option(help="referrals: number of referrals; myeloma: population size"),
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed; the same seed gives the same files")] = 7,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("var/cohorts"),
    artefacts: Annotated[bool, typer.Option(help="inject the documented lab artefacts")] = True,
) -> None:
    """Simulate a cohort (wide and long Parquet plus a manifest) with known true risks."""
    from training.cohorts.simulator import run_simulation

    manifest = run_simulation(cohort=cohort, n=n, seed=seed, out=out, artefacts=artefacts)
    make_console().print_json(data=manifest)


WorkdirOption = Annotated[
    Path,
    typer.Option(
        envvar="TRIAGE_HOME", help="work folder: MLflow store, artifacts, reports (git-ignored)"
    ),
]


def _tracking(workdir: Path):  # type: ignore[no-untyped-def]
    from training.registry.store import Tracking

    return Tracking(workdir)


def _fmt_ci(block: dict[str, Any] | None) -> str:
    if not block or block.get("estimate") is None:
        return "-"
    return f"{block['estimate']:.3f} [{block['low']:.3f}, {block['high']:.3f}]"


@app.command()
def train(
    spec: Annotated[str, typer.Option(help="spec name (e.g. lower_gi) or path to a spec YAML")],
    cohort: Annotated[Path, typer.Option(help="wide file, or folder with wide or long tables")],
    workdir: WorkdirOption = Path("var"),
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples for CIs")] = 200,
    seed: Annotated[int | None, typer.Option(help="override the spec's seed")] = None,
    window_days: Annotated[int, typer.Option(help="as-of window for long cohorts")] = 90,
    register: Annotated[bool, typer.Option(help="register the model as challenger")] = True,
    source: Annotated[
        str, typer.Option(help="auto | wide | long: which tables of a cohort folder to use")
    ] = "auto",
) -> None:
    """Train, calibrate, evaluate, log to MLflow and register a model (alias challenger)."""
    from models.spec import load_spec
    from training.fit.train import TrainOptions
    from training.registry.runs import train_and_register

    if source not in ("auto", "wide", "long"):
        raise typer.BadParameter(f"--source must be auto, wide or long, not {source!r}")
    options = TrainOptions(
        cohort=cohort,
        window_days=window_days,
        source=cast("Source", source),
        n_boot=n_boot,
        seed=seed,
    )
    trained = train_and_register(
        load_spec(spec), options, _tracking(workdir), workdir / "reports", register=register
    )
    _print_training(trained.result, trained.logged, trained.report)


def _print_training(result, logged, report_path: Path) -> None:  # type: ignore[no-untyped-def]
    ev, base = result.evaluation, result.baseline_evaluation
    table = Table(title=f"{result.spec.name}: evaluation period ({ev.get('scale', 'cohort')})")
    table.add_column("metric")
    table.add_column("LightGBM")
    table.add_column("spline baseline")
    rows = [
        ("rows / events", f"{ev['n']:,} / {ev['events']:,}", ""),
        ("AUC [95% CI]", _fmt_ci(ev["auc"]), _fmt_ci(base["auc"])),
        ("calibration slope", f"{ev['calibration']['slope']:.3f}",
         f"{base['calibration']['slope']:.3f}"),
        ("O/E", f"{ev['calibration']['observed_expected']:.3f}",
         f"{base['calibration']['observed_expected']:.3f}"),
        ("Brier", f"{ev['brier']:.4f}", f"{base['brier']:.4f}"),
    ]  # fmt: skip
    oracle = ev.get("oracle")
    if oracle:
        rows.append(("oracle AUC (true risk)", f"{oracle['oracle_auc']:.3f}", ""))
    for band in ("green", "red"):
        block = (ev.get("thresholds") or {}).get(band) or {}
        if block:
            rows.append((f"{band}: sensitivity", _fmt_ci(block.get("sensitivity")), ""))
            rows.append((f"{band}: PPV", _fmt_ci(block.get("ppv")), ""))
    for row in rows:
        table.add_row(*row)
    console = make_console()
    console.print(table)
    t = result.predictor.thresholds
    console.print(
        f"thresholds: green < {t.rule_out:.4g}, red >= {t.rule_in:.4g}"
        if t.rule_out is not None and t.rule_in is not None
        else f"thresholds: green < {t.rule_out}, red >= {t.rule_in}"
    )
    console.print(f"excluded as ineligible: {result.provenance['exclusions'] or 'none'}")
    console.print(f"run {logged.run_id}; registered version {logged.version} (alias challenger)")
    console.print(f"report: {report_path}")


@app.command()
def compare(
    spec: Annotated[str, typer.Option(help="spec name")],
    workdir: WorkdirOption = Path("var"),
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples for paired CIs")] = 200,
) -> None:
    """Side-by-side table of registered versions and the champion."""
    from models.spec import load_spec
    from training.registry.promote import compare as compare_versions

    frame = compare_versions(_tracking(workdir), load_spec(spec), n_boot=n_boot)
    table = Table(title=f"{spec}: registered versions (evaluation period)")
    for column in ("version", "aliases", "AUC [CI]", "ΔAUC vs champion [CI]", "slope", "O/E",
                   "rule-out sens [CI]", "ruled out", "net benefit"):  # fmt: skip
        table.add_column(column)
    for row in frame.to_dict("records"):
        diff = row["auc_diff_vs_champion"]
        table.add_row(
            str(row["version"]),
            row["aliases"] or "-",
            f"{row['auc']:.3f} [{row['auc_ci'][0]:.3f}, {row['auc_ci'][1]:.3f}]",
            "-" if row["auc_diff_ci"] is None else f"{diff:+.4f} [{row['auc_diff_ci'][0]:+.4f}, "
            f"{row['auc_diff_ci'][1]:+.4f}]",
            f"{row['calibration_slope']:.3f}",
            f"{row['observed_expected']:.3f}",
            "-" if row["rule_out_sensitivity"] is None else
            f"{row['rule_out_sensitivity']:.3f} [{row['rule_out_sensitivity_ci'][0]:.3f}, "
            f"{row['rule_out_sensitivity_ci'][1]:.3f}]",
            "-" if row["share_ruled_out"] is None else f"{row['share_ruled_out']:.1%}",
            "-" if row["net_benefit"] is None else f"{row['net_benefit']:.4f}",
        )  # fmt: skip
    make_console().print(table)


@app.command()
def promote(
    spec: Annotated[str, typer.Option(help="spec name")],
    version: Annotated[str, typer.Option(help="registered version number or alias")],
    workdir: WorkdirOption = Path("var"),
    override_reason: Annotated[
        str | None, typer.Option(help="promote despite failed gates; recorded as a tag")
    ] = None,
) -> None:
    """Move alias champion to a version when every gate passes; otherwise refuse and say why."""
    from models.spec import load_spec
    from training.registry.promote import promote as promote_version

    promoted, gates = promote_version(
        _tracking(workdir), load_spec(spec), version, override_reason=override_reason
    )
    table = Table(title=f"{spec} v{version}: promotion gates")
    for column in ("gate", "result", "detail"):
        table.add_column(column)
    for gate in gates:
        table.add_row(gate.name, "pass" if gate.passed else "FAIL", gate.detail,
                      style=None if gate.passed else "red")  # fmt: skip
    console = make_console()
    console.print(table)
    if not promoted:
        console.print("[red]refused: gates failed (use --override-reason to overrule)[/red]")
        raise typer.Exit(code=1)
    console.print(f"{spec} v{version} is now champion")
    release(workdir)


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a training run")],
    workdir: WorkdirOption = Path("var"),
    out: Annotated[Path | None, typer.Option(help="HTML file to write")] = None,
) -> None:
    """Re-render a training run's HTML report from its logged artifacts."""
    import pandas as pd

    from training.evaluation.report import render_report
    from training.registry.runs import comparison_tables
    from training.registry.store import read_run_artifact, run_artifact_json

    tracking = _tracking(workdir)
    client = tracking.client
    card = run_artifact_json(client, run_id, "model_card.json")
    shap_sample = read_run_artifact(client, run_id, "shap_sample.parquet", pd.read_parquet)
    evaluation = run_artifact_json(client, run_id, "metrics.json")
    html = render_report(
        title=f"{card.get('title', card.get('name', run_id))}: evaluation report",
        model_card=card,
        evaluation=evaluation,
        baseline_evaluation=run_artifact_json(client, run_id, "baseline_metrics.json"),
        shap_sample=shap_sample,
        extra_tables=comparison_tables(evaluation),
    )
    target = out or workdir / "reports" / f"run-{run_id}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(html)
    make_console().print(f"report: {target}")


@app.command(name="models")
def list_models(workdir: WorkdirOption = Path("var")) -> None:
    """Registered models with their versions, aliases and evaluation AUC."""
    from training.registry.promote import aliases_by_version

    tracking = _tracking(workdir)
    client = tracking.client
    table = Table(title="Registered models")
    for column in ("model", "version", "aliases", "AUC", "status", "run"):
        table.add_column(column)
    for model in client.search_registered_models():
        aliases = aliases_by_version(tracking, model.name)
        for mv in sorted(
            client.search_model_versions(f"name = '{model.name}'"), key=lambda v: int(v.version)
        ):
            names = ",".join(aliases.get(str(mv.version), [])) or "-"
            table.add_row(model.name, str(mv.version), names, mv.tags.get("auc", "-"),
                          mv.tags.get("validation_status", "-"), mv.run_id or "-")  # fmt: skip
    make_console().print(table)


@app.command()
def release(workdir: WorkdirOption = Path("var")) -> None:
    """Copy every champion from the MLflow registry into the BentoML store for serving."""
    use_bentoml_store(workdir)
    from serving.release import release_champions

    released = release_champions(_tracking(workdir).uri)
    versions = ", ".join(f"{n} v{m['version']}" for n, m in released["models"].items())
    make_console().print(f"released {released['tag']}: {versions}")


@app.command()
def serve(
    workdir: WorkdirOption = Path("var"),
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 3000,
) -> None:
    """Serve every released champion with BentoML (one worker per core)."""
    from serving.config import LOOPBACK_HOSTS, ServingConfig, serve_command

    home = use_bentoml_store(workdir)
    env = {**os.environ, "TRIAGE_HOME": str(workdir.resolve()), "BENTOML_HOME": str(home)}
    config = ServingConfig.from_env(env)  # also creates the pseudonymisation key once, here
    if not config.auth_required and host not in LOOPBACK_HOSTS:
        make_console().print(
            "[red]refused: no API keys are configured (TRIAGE_API_KEYS), so the server binds only "
            "to loopback (127.0.0.1)[/red]"
        )
        raise typer.Exit(code=2)
    from models.predictor import ArtifactError
    from serving.release import verify_store_release

    try:  # a tampered artifact must stop the start, not send workers into a restart loop
        served = verify_store_release()
        make_console().print(
            "verified: " + ", ".join(f"{n} v{m.version}" for n, m in served.items())
        )
    except ArtifactError as error:
        make_console().print(f"[red]refusing to serve: {error}[/red]")
        raise typer.Exit(code=3) from None
    except LookupError as error:  # start anyway: /readyz stays failing and says why
        make_console().print(f"[yellow]{error}; the server will not become ready[/yellow]")
    raise typer.Exit(code=subprocess.call(serve_command(host, port, env), env=env))


audit_app = typer.Typer(help="The audit trail of scored requests.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("export")
def audit_export(
    out: Annotated[Path, typer.Option(help="Parquet file to write")] = Path("var/audit.parquet"),
    workdir: WorkdirOption = Path("var"),
) -> None:
    """Write the audit trail (pseudonymised) to Parquet."""
    from serving.audit import AuditStore
    from serving.config import ServingConfig

    env = {**os.environ, "TRIAGE_HOME": str(workdir)}
    store = AuditStore(ServingConfig.from_env(env).audit_url)
    rows = store.export_parquet(out)
    problems = store.integrity_problems()
    make_console().print(f"{rows:,} audit rows -> {out}; integrity: {problems or 'ok'}")


@app.command()
def replay(
    model: Annotated[
        list[str],
        typer.Option(help="NAME@ALIAS or NAME/VERSION; give it twice (A then B) for side by side"),
    ],
    cohort: Annotated[
        Path, typer.Option(help="wide Parquet/CSV, or a folder with wide or long (results+index)")
    ],
    out: Annotated[Path, typer.Option(help="output folder: scores, drift, report, manifest")],
    window: Annotated[int, typer.Option(help="as-of window in days, for long cohorts")] = 90,
    explain: Annotated[
        bool, typer.Option(help="add base + per-feature contributions (calibrated log-odds)")
    ] = False,
    engine: Annotated[str, typer.Option(help="local (chunked) | spark")] = "local",
    workdir: WorkdirOption = Path("var"),
    source: Annotated[
        str, typer.Option(help="auto | wide | long: which tables of a cohort folder to use")
    ] = "auto",
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples for CIs")] = 200,
    chunk_rows: Annotated[int, typer.Option(help="rows per chunk (local engine)")] = 200_000,
    spark_master: Annotated[
        str | None, typer.Option(help="Spark master (default: spark-submit's, else local[*])")
    ] = None,
) -> None:
    """Replay a cohort through pinned model version(s): scores, drift, evaluation, what-if."""
    from rich.progress import Progress

    from training.cohorts.reader import open_cohort
    from training.evaluation.drift import flagged as flagged_drift
    from training.replay.options import ReplayOptions
    from training.replay.run import replay as run_replay

    if engine not in ("local", "spark") or source not in ("auto", "wide", "long"):
        raise typer.BadParameter(f"--engine local|spark and --source auto|wide|long: {engine}")
    if not 1 <= len(model) <= 2:
        raise typer.BadParameter("give --model once, or twice for side by side")
    options = ReplayOptions(
        cohort=cohort,
        out=out,
        window_days=window,
        source=cast("Source", source),
        explain=explain,
        engine=cast(Literal["local", "spark"], engine),
        chunk_rows=chunk_rows,
        n_boot=n_boot,
        spark_master=spark_master,
    )
    console = make_console()
    with Progress(console=console, transient=True) as progress:
        rows = open_cohort(cohort, window, options.source).n_rows()
        task = progress.add_task("replaying", total=rows)
        result = run_replay(
            _tracking(workdir), model, options, lambda done: progress.update(task, completed=done)
        )
    table = Table(title=f"replay of {cohort} ({result.manifest['cohort']['rows']:,} rows)")
    for column in ("model", "run", "booster sha256", "scored", "ineligible", "green", "red",
                   "drift flags", "AUC [95% CI]", "O/E", "cancers green"):  # fmt: skip
        table.add_column(column)
    for outcome in result.models:
        counts, ev, pinned = outcome.counts(), outcome.evaluation or {}, outcome.pinned
        total: dict[Any, Any] = outcome.what_if.iloc[-1].to_dict() if len(outcome.what_if) else {}
        table.add_row(
            pinned.label, pinned.run_id or "-", pinned.booster_sha256[:12],
            f"{counts['scored']:,}", f"{counts['ineligible']:,}",
            f"{counts['bands']['green']:,}", f"{counts['bands']['red']:,}",
            str(int(outcome.drift["flagged"].sum())), _fmt_ci(ev.get("auc")),
            f"{ev['calibration']['observed_expected']:.3f}" if ev else "-",
            str(total.get("cancers green", "-")),
        )  # fmt: skip
    console.print(table)
    for outcome in result.models:
        reasons = ", ".join(f"{k} {v:,}" for k, v in outcome.summary.exclusions.most_common())
        console.print(f"{outcome.pinned.label}: ineligible (kept in the scores): {reasons or '-'}")
        flagged = flagged_drift(outcome.drift)
        for row in flagged[flagged["psi_flag"] == "major"].head(5).to_dict("records"):
            console.print(
                f"  drift: {row['feature']} at {row['lab']} lab(s), {row['period']}: "
                f"PSI {row['psi']:.2f} (major)"
            )
    diff = (result.comparison or {}).get("auc_difference")
    if diff:
        a, b = result.comparison["models"]  # type: ignore[index]
        console.print(f"AUC {a} - {b}: {_fmt_ci(diff)} (paired bootstrap)")
    console.print(f"outputs in {out}: {', '.join(result.manifest['outputs'])}")


if __name__ == "__main__":
    app()
