"""Commands about models: train, compare, promote, report, list, release, serve (the audit
commands: `training.cli.audit`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.table import Table

from training.cli.app import WORKDIR, TrackingUriOption, WorkdirOption, _fmt_ci, _tracking, app
from training.console import make_console, use_bentoml_store
from training.evaluation.formatting import (
    difference_text,
    family_label,
    green_risk_text,
    inline_text,
    interval_text,
    number_text,
    threshold_choice_text,
)

if TYPE_CHECKING:
    from training.cohorts.reader import Source


MODEL_HELP = "registered model name (its logged spec is used), or a spec YAML file"


@app.command()
def train(
    spec: Annotated[str, typer.Option(help="spec name (e.g. lower_gi) or path to a spec YAML")],
    cohort: Annotated[Path, typer.Option(help="wide file, or folder with wide or long tables")],
    workdir: WorkdirOption = WORKDIR,
    tracking_uri: TrackingUriOption = None,
    n_boot: Annotated[
        int, typer.Option(help="bootstrap resamples for CIs (the gates read them: >= 1,000)")
    ] = 1000,
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
        load_spec(spec),
        options,
        _tracking(workdir, tracking_uri),
        workdir / "reports",
        register=register,
    )
    _print_training(trained.result, trained.logged, trained.report)


def _print_training(result, logged, report_path: Path) -> None:  # type: ignore[no-untyped-def]
    ev, base = result.evaluation, result.baseline_evaluation
    table = Table(title=f"{result.spec.name}: evaluation period ({ev.get('scale', 'cohort')})")
    table.add_column("metric")
    table.add_column(f"{family_label(ev.get('model_family'), 'served model')} (served)")
    table.add_column(f"{family_label(base.get('model_family'), 'comparator')} (comparator)")
    calibration, base_calibration = ev["calibration"], base["calibration"]
    rows = [
        ("rows / events", f"{ev['n']:,} / {ev['events']:,}", "same rows"),
        ("AUC [95% CI]", _fmt_ci(ev["auc"]), _fmt_ci(base["auc"])),
        ("calibration slope", number_text(calibration["slope"]),
         number_text(base_calibration["slope"])),
        ("O/E", number_text(calibration["observed_expected"]),
         number_text(base_calibration["observed_expected"])),
        ("Brier", number_text(ev["brier"], 4), number_text(base["brier"], 4)),
    ]  # fmt: skip
    oracle = ev.get("oracle")
    if oracle:
        rows.append(("oracle AUC (true risk)", number_text(oracle.get("oracle_auc")), ""))
    rows += band_rows(ev.get("thresholds") or {})
    for row in rows:
        table.add_row(*row)
    console = make_console()
    console.print(table)
    provenance = result.provenance
    _print_findings(console, ev, provenance, result.predictor.thresholds, result.spec)
    rows, events = provenance["rows"], provenance["events"]
    console.print(
        "rows / events by period: "
        + ", ".join(f"{name} {rows[name]:,} / {events[name]:,}" for name in rows)
        + f" (early stopping: {result.spec.split.early_stopping_fraction:.0%} of the training "
        "patients, at random)"
    )
    for warning in (provenance.get("cohort") or {}).get("warnings", []):
        console.print(f"[yellow]warning: {warning}[/yellow]")
    console.print(f"excluded as ineligible: {inline_text(provenance['exclusions'])}", markup=False)
    registered = (
        f"registered version {logged.version} (alias challenger)"
        if logged.version is not None
        else "not registered (--no-register)"
    )
    console.print(f"run {logged.run_id}; {registered}")
    console.print(f"report: {report_path}")


def band_rows(thresholds: Any) -> list[tuple[str, str, str]]:
    """The evaluation at the green and red cut-offs, each value named for what it is: the green
    cut-off's sensitivity is the share of events not put in green, its PPV that of a non-green
    result, its NPV that of a green result; the red cut-off's are those of a red result."""
    rows = []
    green, red = thresholds.get("green") or {}, thresholds.get("red") or {}
    if green:
        rows += [
            (
                "green cut-off: sensitivity (events not green)",
                _fmt_ci(green.get("sensitivity")),
                "",
            ),
            ("PPV of a non-green result", _fmt_ci(green.get("ppv")), ""),
            ("NPV of a green result", _fmt_ci(green.get("npv")), ""),
        ]
    if red:
        rows += [
            ("red cut-off: sensitivity (events red)", _fmt_ci(red.get("sensitivity")), ""),
            ("PPV of a red result", _fmt_ci(red.get("ppv")), ""),
        ]
    return rows


def _print_findings(console: Any, ev: Any, provenance: Any, thresholds: Any, spec: Any) -> None:
    """The served family and why, the thresholds (or why not set), the green band's risk against
    the referral threshold, and the flagged subgroups."""
    choice = provenance.get("model_family") or {}
    difference = difference_text(choice.get("calibration_auc_difference"))
    console.print(
        f"served model: {family_label(choice.get('chosen') or ev.get('model_family'), '?')}: "
        + (choice.get("reason") or f"calibration-period ΔAUC LightGBM - spline {difference}"),
        markup=False,
    )
    chosen = provenance.get("thresholds") or {}
    console.print(f"thresholds: {describe_thresholds(thresholds, spec, chosen)}", markup=False)
    for key, band in (("rule_out", "green"), ("rule_in", "red")):
        console.print(f"  {band}: {threshold_choice_text(chosen.get(key))}", markup=False)
    green = (ev.get("thresholds") or {}).get("green")
    below = isinstance(green, dict) and green.get("risk_in_green_below_referral") is True
    console.print(green_risk_text(green), style=None if below else "yellow", markup=False)
    flags = (ev.get("subgroups") or {}).get("flagged") or []
    if not flags:
        console.print("subgroups flagged: none")
        return
    table = Table(title=f"Subgroups flagged ({len(flags)})", title_style="bold red")
    for column in (
        "subgroup",
        "level",
        "events",
        "check failed",
        "rule-out sens % [CI]",
        "O/E [CI]",
    ):
        table.add_column(column)
    for entry in flags:
        table.add_row(
            str(entry.get("column")), str(entry.get("level")), f"{entry.get('events', 0):,}",
            ", ".join(entry.get("flags") or []),
            interval_text(entry.get("rule_out_sensitivity"), percent=True),
            interval_text(entry.get("observed_expected_ci"), 2),
        )  # fmt: skip
    console.print(table)


def describe_thresholds(thresholds: Any, spec: Any, choices: Any = None) -> str:
    """The green and red cut-offs, or, for a band without one, that it has no threshold and why
    (its target not reached on the calibration period, or too few events there to set one;
    `choices`: the provenance's threshold choices by direction)."""
    choices = choices or {}
    green = (
        f"green < {thresholds.rule_out:.4g}"
        if thresholds.rule_out is not None
        else _no_threshold(
            "green",
            choices.get("rule_out"),
            f"the rule-out sensitivity target ({spec.triage.rule_out_sensitivity:g})",
        )
    )
    red = (
        f"red >= {thresholds.rule_in:.4g}"
        if thresholds.rule_in is not None
        else _no_threshold(
            "red", choices.get("rule_in"), f"the PPV target ({spec.triage.rule_in_ppv:g})"
        )
    )
    return f"{green}; {red}"


def _no_threshold(band: str, choice: Any, target: str) -> str:
    """`no red threshold: <why>, so there is no red band`: too few calibration-period events to
    set one (when the recorded choice says so), else its target not reached there."""
    choice = choice if isinstance(choice, dict) else {}
    events, needed = choice.get("events"), choice.get("min_events")
    if isinstance(events, int) and isinstance(needed, int) and events < max(needed, 1):
        why = f"only {events:,} calibration-period events, fewer than the {needed:,} needed"
    else:
        why = f"{target} was not reached on the calibration period"
    return f"no {band} threshold: {why}, so there is no {band} band"


@app.command()
def compare(
    model: Annotated[str, typer.Option("--model", "--spec", help=MODEL_HELP)],
    workdir: WorkdirOption = WORKDIR,
    tracking_uri: TrackingUriOption = None,
    n_boot: Annotated[
        int | None,
        typer.Option(
            help="bootstrap resamples for paired CIs (default: the spec's promotion.n_boot)"
        ),
    ] = None,
) -> None:
    """Side-by-side table of registered versions and the champion: each version's ΔAUC is
    measured on its own evaluation patients, re-scored by the champion."""
    from training.registry.promote import compare as compare_versions
    from training.registry.store import model_spec

    tracking = _tracking(workdir, tracking_uri)
    spec = model_spec(tracking, model)  # the champion's (else the latest version's) spec
    frame = compare_versions(tracking, spec, n_boot=n_boot)
    resamples = int(frame["n_boot"].iloc[0]) if len(frame) else spec.promotion.n_boot
    table = Table(
        title=f"{spec.name}: registered versions (evaluation period)",
        caption=f"ΔAUC: version - champion on the version's own evaluation rows, re-scored by "
        f"the champion (rows compared / refused by it); 95% CI from {resamples:,} paired "
        f"bootstrap resamples of patients (of matched sets for case-control rows)",
    )
    for column in ("version", "aliases", "AUC [CI]", "ΔAUC vs champion [CI]", "rows compared",
                   "slope", "O/E", "rule-out sens [CI]", "ruled out", "net benefit"):  # fmt: skip
        table.add_column(column)
    for row in frame.to_dict("records"):
        diff = row["auc_diff_vs_champion"]
        table.add_row(
            str(row["version"]),
            row["aliases"] or "-",
            f"{row['auc']:.3f} [{row['auc_ci'][0]:.3f}, {row['auc_ci'][1]:.3f}]",
            (row["auc_diff_note"] or "-") if row["auc_diff_ci"] is None else
            f"{diff:+.4f} [{row['auc_diff_ci'][0]:+.4f}, {row['auc_diff_ci'][1]:+.4f}]",
            "-" if row["auc_diff_ci"] is None else
            f"{int(row['auc_diff_rows']):,} / {int(row['auc_diff_refused']):,} refused",
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
    model: Annotated[str, typer.Option("--model", "--spec", help=MODEL_HELP)],
    version: Annotated[str, typer.Option(help="registered version number or alias")],
    workdir: WorkdirOption = WORKDIR,
    tracking_uri: TrackingUriOption = None,
    override_reason: Annotated[
        str | None, typer.Option(help="promote despite failed gates; recorded as a tag")
    ] = None,
) -> None:
    """Move alias champion to a version when every gate passes; otherwise refuse and say why."""
    from training.registry.promote import promote as promote_version
    from training.registry.store import model_spec

    tracking = _tracking(workdir, tracking_uri)
    spec = model_spec(tracking, model, version)  # the gates of the spec the version was trained on
    promoted, gates = promote_version(tracking, spec, version, override_reason=override_reason)
    table = Table(title=f"{spec.name} v{version}: promotion gates")
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
    console.print(f"{spec.name} v{version} is now champion")
    release(workdir, tracking_uri)


@app.command()
def report(
    run_id: Annotated[
        str | None, typer.Argument(help="MLflow run id of a training run (or give --model)")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="registered model name: report on one of its versions")
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(help="with --model: version number or alias (default: champion, else latest)"),
    ] = None,
    workdir: WorkdirOption = WORKDIR,
    tracking_uri: TrackingUriOption = None,
    out: Annotated[Path | None, typer.Option(help="HTML file to write")] = None,
) -> None:
    """Re-render a training run's HTML report from its logged artifacts."""
    import pandas as pd

    from training.evaluation.report import render_report
    from training.registry.runs import comparison_tables
    from training.registry.store import read_run_artifact, resolve_version, run_artifact_json

    if (run_id is None) == (model is None):
        raise typer.BadParameter("give a run id or --model NAME [--version V], not both")
    tracking = _tracking(workdir, tracking_uri)
    client = tracking.client
    if model is not None:
        registered = resolve_version(client, model, version)
        if registered.run_id is None:
            raise typer.BadParameter(f"{model} v{registered.version} has no training run")
        run_id = registered.run_id
    assert run_id is not None
    card = run_artifact_json(client, run_id, "model_card.json")
    card["version"] = registered_versions(client, run_id, card.get("name")) or card.get("version")
    shap_sample = read_run_artifact(client, run_id, "shap_sample.parquet", pd.read_parquet)
    evaluation = run_artifact_json(client, run_id, "metrics.json")
    comparator = run_artifact_json(client, run_id, "baseline_metrics.json")
    html = render_report(
        title=f"{card.get('title', card.get('name', run_id))}: evaluation report",
        model_card=card,
        evaluation=evaluation,
        baseline_evaluation=comparator,
        shap_sample=shap_sample,
        extra_tables=comparison_tables(evaluation, comparator),
    )
    target = out or workdir / "reports" / f"run-{run_id}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(html)
    make_console().print(f"report: {target}")


def registered_versions(client: Any, run_id: str, name: str | None) -> str | None:
    """The version(s) registered from a run, as the report header names them: `3` (versions of
    the run's own model), else `other_name v2`, comma-separated; None when none was."""
    found = client.search_model_versions(f"run_id = '{run_id}'")
    ordered = sorted(found, key=lambda v: (v.name != name, v.name, int(v.version)))
    texts = [str(v.version) if v.name == name else f"{v.name} v{v.version}" for v in ordered]
    return ", ".join(texts) or None


@app.command(name="models")
def list_models(workdir: WorkdirOption = WORKDIR, tracking_uri: TrackingUriOption = None) -> None:
    """Registered models with their versions, aliases and evaluation AUC."""
    from training.registry.promote import aliases_by_version

    tracking = _tracking(workdir, tracking_uri)
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
def release(
    workdir: WorkdirOption = WORKDIR,
    tracking_uri: TrackingUriOption = None,
    pin: Annotated[
        list[str] | None,
        typer.Option("--pin", help="also release NAME/VERSION or NAME@ALIAS, for requests that "
                     "pin a version (repeatable)"),
    ] = None,
) -> None:  # fmt: skip
    """Copy every champion (and any version named with --pin) from the MLflow registry into the
    BentoML store for serving."""
    use_bentoml_store(workdir)
    from serving.release import release_champions

    tracking = _tracking(workdir, tracking_uri)
    released = release_champions(tracking.uri, registry_uri=tracking.registry_uri,
                                 extra=pin or ())  # fmt: skip
    versions = ", ".join(f"{n} v{m['version']}" for n, m in released["models"].items())
    make_console().print(f"released {released['tag']}: {versions}")


@app.command()
def serve(
    workdir: WorkdirOption = WORKDIR,
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
    from serving.shadow import ShadowConfigError, resolve_shadows

    try:  # a tampered artifact must stop the start, not send workers into a restart loop
        served = verify_store_release()
        make_console().print(
            "verified: " + ", ".join(f"{n} v{m.version}" for n, m in served.items())
        )
        shadows = resolve_shadows(served, config.shadows)  # the workers' own check (not ready)
        for found in shadows.values():
            make_console().print("shadows: " + ", ".join(f"{s.name} v{s.version}" for s in found))
    except (ArtifactError, ShadowConfigError) as error:
        make_console().print(f"[red]refusing to serve: {error}[/red]")
        raise typer.Exit(code=3) from None
    except LookupError as error:  # start anyway: /readyz stays failing and says why
        make_console().print(f"[yellow]{error}; the server will not become ready[/yellow]")
    from serving.server import run_foreground

    # Stops gracefully on SIGTERM/SIGINT: in-flight requests finish, every worker ends, exit 0.
    raise typer.Exit(code=run_foreground(serve_command(host, port, env), env))
