"""A fixed pipeline's observable outputs, through public surfaces only (the `triage` CLI, the MLflow
registry, the files written and the HTTP API), so that a change to the code's inner layout can be
shown not to change behaviour.

    python -m tests.golden.snapshot --out DIR [--record]

simulates a small referral cohort and a myeloma population (fixed seeds), trains `any_cancer`
(twice, two seeds), `lower_gi` and `myeloma` from the command line, promotes and releases them,
replays the referral cohort side by side with explanations (wide tables) and once from the long
lab extract, scores the pyfunc face of a registered model, and sends a fixed set of JSON and FHIR
requests to the in-process service. It writes `DIR/snapshot.json`: content digests of every cohort
and score file (of the values, not of the file bytes), the logged evaluation of every run, the
replay's metrics and manifest, the registry's view of each version, and the API responses, with
only what differs from run to run removed (run ids, timings, paths, clock times). With `--record`
it also writes the result to `tests/golden/pipeline.json`, the reference the test compares with.

It runs in a process of its own: BentoML's store, MLflow's tracking URI and the Prometheus
registry are process-wide.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.small_specs import small_cohort_spec

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "pipeline.json"
N_REFERRALS = 16_000
N_POPULATION = 600_000
N_BOOT = 20
ROOT = ["/nonexistent"]  # the scratch folder of this run, hidden in printed output
# What differs between two runs of the same pipeline: never compared.
VOLATILE = {
    "run_id",
    "trained_at",
    "train_seconds",
    "timings_seconds",
    "code_version",
    "cohort_path",
    "path",
    "occurrenceDateTime",
    "mlflow_run",
    "created_at",
}


CODE_VERSION = re.compile(r"\d+\.\d+\.\d+\+g[0-9a-f]+(\.dirty)?")  # e.g. in the TRIPOD list


def _strip(value: Any) -> Any:
    """The value without volatile keys or code versions, with tuples as lists (as in JSON)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list | tuple):
        return [_strip(v) for v in value]
    if isinstance(value, str):
        return CODE_VERSION.sub("CODE_VERSION", value)
    return value


def canonical(value: Any) -> str:
    """JSON with sorted keys and exact floats (repr), NaN kept as NaN."""
    return json.dumps(_strip(value), sort_keys=True, allow_nan=True, default=str)


def digest(value: Any) -> str:
    return hashlib.sha256(canonical(value).encode()).hexdigest()[:20]


def frame_digest(frame: Any) -> dict[str, Any]:
    """Rows, columns and a digest of each column's values (exact, whatever the file's bytes)."""
    import pandas as pd

    columns = {}
    for name in frame.columns:
        column = frame[name]
        try:
            hashed = pd.util.hash_pandas_object(column, index=False)
        except TypeError:  # list cells (warning codes, reasons)
            hashed = pd.util.hash_pandas_object(column.map(lambda v: "|".join(map(str, v))))
        columns[str(name)] = hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()[:16]
    return {"rows": len(frame), "columns": columns}


def sections(evaluation: dict[str, Any]) -> dict[str, Any]:
    """An evaluation by top-level section: headline numbers in full, the rest as digests."""
    out: dict[str, Any] = {}
    for key, value in sorted(evaluation.items()):
        small = not isinstance(value, dict | list) or len(canonical(value)) <= 400
        out[key] = _strip(value) if small else digest(value)
    return out


def run_cli(args: list[str]) -> str:
    from typer.testing import CliRunner

    from training.cli import app

    result = CliRunner().invoke(app, args)
    if result.exit_code != 0:
        raise RuntimeError(f"triage {' '.join(args)} failed ({result.exit_code}):\n{result.output}")
    return result.output


def cohorts(root: Path) -> dict[str, Any]:
    import pandas as pd

    out: dict[str, Any] = {}
    for cohort, n in (("referrals", N_REFERRALS), ("myeloma", N_POPULATION)):
        folder = root / cohort
        run_cli(
            ["simulate", "--cohort", cohort, "--n", str(n), "--seed", "5", "--out", str(folder)]
        )
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest.pop("files", None)  # hashes of Parquet bytes: the values are digested below
        out[cohort] = {
            "manifest": _strip(manifest),
            "files": {
                p.name: frame_digest(pd.read_parquet(p)) for p in sorted(folder.glob("*.parquet"))
            },
        }
    return out


def train_and_register(root: Path, work: list[str]) -> dict[str, Any]:
    """Train (CLI), promote, compare and release; the registry's view of every version."""
    runs = [
        ("any_cancer", "referrals", []),
        ("any_cancer", "referrals", ["--seed", "99"]),
        ("lower_gi", "referrals", []),
        ("myeloma", "myeloma", []),
    ]
    outputs: dict[str, Any] = {}
    # 16,000 referrals hold too few lower-GI cancers for the shipped floor of events per period.
    small = root / "lower_gi.yaml"
    small.write_text(yaml.safe_dump(small_cohort_spec("lower_gi").model_dump(mode="json")))
    for name, cohort, extra in runs:
        run_cli(
            [
                "train",
                "--spec",
                str(small) if name == "lower_gi" else name,
                "--cohort",
                str(root / cohort),
                "--n-boot",
                str(N_BOOT),
                *extra,
                *work,
            ]
        )
    for name in ("any_cancer", "lower_gi", "myeloma"):
        promoted = run_cli(
            [
                "promote",
                "--spec",
                name,
                "--version",
                "1",
                "--override-reason",
                "golden pipeline",
                *work,
            ]
        )
        outputs[f"promote {name} v1"] = _table_lines(promoted)
    outputs["compare any_cancer"] = _table_lines(
        run_cli(["compare", "--spec", "any_cancer", "--n-boot", str(N_BOOT), *work])
    )
    outputs["registry"] = registry(Path(work[1]))
    return outputs


def _table_lines(text: str) -> list[str]:
    """Printed lines as table cells, without box drawing, run ids (32 hex digits), BentoML tags
    and the scratch folder's path; wrapped prose lines joined (the wrap depends on the path)."""
    lines: list[str] = []
    prose = False
    for line in text.splitlines():
        table = re.search(r"[\u2500-\u257f]", line) is not None
        cells = [c.strip() for c in re.split(r"[\u2500-\u257f]", line) if c.strip()]
        cells = [c for c in cells if not re.fullmatch(r"[0-9a-f]{32}", c)]
        if not cells:
            prose = False
        elif table:
            lines.append(" | ".join(cells))
            prose = False
        elif prose:
            lines[-1] += " " + " ".join(cells)
        else:
            lines.append(" ".join(cells))
            prose = True
    return [
        re.sub(r"triage-champions:\w+", "triage-champions:TAG", line.replace(ROOT[0], "ROOT"))
        for line in lines
    ]


def registry(workdir: Path) -> dict[str, Any]:
    """Each registered version: evaluations, provenance counts, the predictor's JSON (without the
    booster text, digested instead) and the logged predictions."""
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    out: dict[str, Any] = {}
    scratch = workdir / "golden-downloads"
    for model in sorted(client.search_registered_models(), key=lambda m: m.name):
        for mv in sorted(
            client.search_model_versions(f"name = '{model.name}'"), key=lambda v: int(v.version)
        ):

            def artifact(
                path: str, read: Callable[[Path], Any], run_id: str = str(mv.run_id)
            ) -> Any:
                local = mlflow.artifacts.download_artifacts(
                    run_id=run_id,
                    artifact_path=path,
                    dst_path=str(scratch / run_id),
                    tracking_uri=uri,
                )
                return read(Path(local))

            def as_json(p: Path) -> Any:
                return json.loads(p.read_text())

            model_dir = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{model.name}/{mv.version}",
                    dst_path=str(scratch / f"{model.name}-{mv.version}"),
                    tracking_uri=uri,
                )
            )
            predictor_dir = model_dir / "artifacts" / "predictor"
            meta = json.loads((predictor_dir / "predictor.json").read_text())
            model_file = "spline.json" if meta.get("family") == "spline" else "booster.txt"
            booster = (predictor_dir / model_file).read_text()
            provenance = artifact("provenance.json", as_json)
            card = artifact("model_card.json", as_json)
            out[f"{model.name}/{mv.version}"] = {
                "tags": {
                    k: v
                    for k, v in sorted(mv.tags.items())
                    if k not in {"run_id", "promoted_at", "spec_digest"}
                },
                "aliases": sorted(a for a, v in model.aliases.items() if str(v) == mv.version),
                "metrics": sections(artifact("metrics.json", as_json)),
                "baseline_metrics": sections(artifact("baseline_metrics.json", as_json)),
                "provenance": {
                    k: provenance[k]
                    for k in ("rows", "events", "exclusions", "n_input", "best_iteration", "seed")
                },
                "model_card": digest({k: v for k, v in card.items() if k != "data"}),
                "predictor": {
                    "family": meta.get("family", "lightgbm"),
                    "calibration": meta["calibration"],
                    "thresholds": meta["thresholds"],
                    "feature_names": meta["feature_names"],
                    "reference": digest(meta["reference"]),
                    "booster_sha256": hashlib.sha256(booster.encode()).hexdigest()[:20],
                },
                "evaluation_predictions": frame_digest(
                    artifact("evaluation_predictions.parquet", pd.read_parquet)
                ),
                "shap_sample": frame_digest(artifact("shap_sample.parquet", pd.read_parquet)),
            }
    return out


def replays(root: Path, work: list[str]) -> dict[str, Any]:
    """Side by side with explanations (wide), and once from the long extract (as-of selection)."""
    import pandas as pd

    out: dict[str, Any] = {}
    runs = {
        "side_by_side_explained": [
            "--model",
            "any_cancer@champion",
            "--model",
            "any_cancer/2",
            "--explain",
        ],
        "lower_gi_long": ["--model", "lower_gi@champion", "--source", "long"],
        "myeloma": ["--model", "myeloma@champion"],
    }
    cohort = {
        "side_by_side_explained": "referrals",
        "lower_gi_long": "referrals",
        "myeloma": "myeloma",
    }
    for name, args in runs.items():
        folder = root / "replay" / name
        printed = run_cli(
            [
                "replay",
                *args,
                "--cohort",
                str(root / cohort[name]),
                "--out",
                str(folder),
                "--n-boot",
                str(N_BOOT),
                "--chunk-rows",
                "5000",
                *work,
            ]
        )
        manifest = json.loads((folder / "manifest.json").read_text())
        for model in manifest["models"]:
            model["pinned"].pop("run_id", None)
            model.pop("scores", None)  # Parquet bytes: digested by value below
        manifest.pop("outputs", None)
        result: dict[str, Any] = {
            "printed": _table_lines(printed),
            "manifest": sections(_strip(manifest)),
            "scores": {
                p.name: frame_digest(pd.read_parquet(p)) for p in sorted(folder.glob("scores*"))
            },
            "drift": frame_digest(pd.read_parquet(folder / "drift.parquet")),
        }
        if (folder / "metrics.json").exists():
            metrics = json.loads((folder / "metrics.json").read_text())
            result["metrics"] = {
                "models": [sections(m) for m in metrics["models"]],
                "comparison": _strip(metrics["comparison"]),
            }
        if (folder / "green_cancers.parquet").exists():
            result["green_cancers"] = frame_digest(
                pd.read_parquet(folder / "green_cancers.parquet")
            )
        out[name] = result
    return out


def pyfunc(root: Path, workdir: Path) -> dict[str, Any]:
    """The MLflow pyfunc face on cohort rows of the model's own population (canonical units)."""
    import mlflow
    import pandas as pd

    uri = f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    wide = pd.read_parquet(root / "referrals" / "referrals_wide.parquet")
    out = {}
    for name in ("any_cancer", "lower_gi"):
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        columns = [c.name for c in model.metadata.get_input_schema().inputs]
        rows = wide if name == "any_cancer" else wide[wide["pathway"] == "lower_gi"]
        rows = rows[rows["haemoglobin_unit"] != "g/dL"].head(400)
        frame = rows[[c for c in columns if c in rows]].reset_index(drop=True)
        frame["age"] = frame["age"].astype("float64")
        for column in ("sex", "pathway"):
            if column in frame:
                frame[column] = frame[column].astype(str)
        predicted = model.predict(frame)
        out[name] = {
            "frame": frame_digest(predicted),
            "status": predicted["status"].value_counts().sort_index().to_dict(),
            "head": predicted.head(5).to_dict("records"),
        }
    return out


def api_requests() -> list[tuple[str, str, dict[str, Any], Any]]:
    """(name, path, query, body): the example patient, routing by pathway, refusals, a batch."""
    import copy

    from serving.examples import EXAMPLE_PATIENT, fhir_bundle

    patient = copy.deepcopy(EXAMPLE_PATIENT)
    no_model = {k: v for k, v in patient.items() if k != "model"}
    no_fbc = copy.deepcopy(patient)
    no_fbc["analytes"].pop("platelets")
    return [
        ("score example", "/v1/score", {}, patient),
        ("route by pathway to lower_gi", "/v1/score", {}, {**no_model, "pathway": "lower_gi"}),
        ("route by pathway to any_cancer", "/v1/score", {}, {**no_model, "pathway": "breast"}),
        ("any_cancer without pathway", "/v1/score", {}, {**no_model, "model": "any_cancer"}),
        ("unknown pathway", "/v1/score", {}, {**no_model, "pathway": "lungs"}),
        ("unknown model", "/v1/score", {}, {**patient, "model": "pancreas"}),
        ("missing panel", "/v1/score", {}, no_fbc),
        ("lower_gi with another pathway", "/v1/score", {}, {**patient, "pathway": "breast"}),
        ("myeloma", "/v1/score", {}, {**patient, "model": "myeloma", "age": 74}),
        ("batch", "/v1/score/batch", {}, {"patients": [patient, no_fbc, {**patient, "age": 12}]}),
        ("fhir lower_gi", "/v1/fhir/score", {"model": "lower_gi"}, fhir_bundle()),
        ("fhir default model", "/v1/fhir/score", {"pathway": "upper_gi"}, fhir_bundle()),
        ("models", "/v1/models", {}, None),
    ]


def api(workdir: Path) -> dict[str, Any]:
    from starlette.testclient import TestClient

    from serving.service import Triage

    out = {}
    with TestClient(Triage.to_asgi()) as client:
        for i, (name, path, query, body) in enumerate(api_requests()):
            headers = {"x-request-id": f"golden-{i}"}
            if body is None:
                response = client.get(path, params=query, headers=headers)
            else:
                response = client.post(path, params=query, json=body, headers=headers)
            body = _strip(response.json())
            if path == "/v1/models":  # long and plain: digested, with the versions shown
                served = {m["name"]: m["version"] for m in body["models"]}
                body = {"served": served, "digest": digest(body)}
            out[name] = {"status": response.status_code, "body": body}
    return out


def report_text(html: str) -> str:
    """A report's text: images (the SHAP sample is not seeded), run ids, clock times and the
    scratch folder removed."""
    text = re.sub(r'src="data:image/png;base64,[^"]*"', "IMG", html).replace(ROOT[0], "ROOT")
    text = re.sub(r"\b[0-9a-f]{32}\b", "RUN_ID", CODE_VERSION.sub("CODE_VERSION", text))
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", "TIME", text)
    return re.sub(r"(train_seconds\D{0,30}?)[\d.]+", r"\1SECONDS", text)


def reports(root: Path) -> dict[str, str]:
    """Digests of every HTML report's text (training reports and replay reports)."""
    return {
        str(path.relative_to(root)): digest(report_text(path.read_text()))
        for path in sorted(root.rglob("*.html"))
        if "golden-downloads" not in path.parts and "mlartifacts" not in path.parts
    }


NUMERIC_PACKAGES = ("numpy", "scipy", "scikit-learn", "lightgbm", "pandas", "pyarrow", "shap")
CPU_FLAGS = ("avx2", "fma", "avx512f")


def environment() -> dict[str, Any]:
    """What decides the last bits of the numbers: the numeric libraries' versions and the CPU
    features their kernels dispatch on (numpy's exp/log and OpenBLAS pick AVX-512 code where
    the CPU has it). The recording is compared exactly only where these are the same."""
    import platform
    from importlib.metadata import version

    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "packages": {name: version(name) for name in NUMERIC_PACKAGES},
    }


def snapshot(root: Path) -> dict[str, Any]:
    """Run the whole pipeline under `root` and return what it produced."""
    workdir = root / "var"
    work = ["--workdir", str(workdir)]
    result: dict[str, Any] = {"environment": environment(), "cohorts": cohorts(root)}
    result["training"] = train_and_register(root, work)
    run_cli(["release", *work])
    result["replay"] = replays(root, work)
    result["pyfunc"] = pyfunc(root, workdir)
    result["api"] = api(workdir)
    result["reports"] = reports(root)
    return result


def differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Where two snapshots differ, as `path: expected != actual` lines."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key in sorted(set(expected) | set(actual)):
            if key not in actual:
                found.append(f"{path}/{key}: missing now")
            elif key not in expected:
                found.append(f"{path}/{key}: new")
            else:
                found += differences(expected[key], actual[key], f"{path}/{key}")
        return found
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        found = []
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            found += differences(e, a, f"{path}[{i}]")
        return found
    if canonical(expected) != canonical(actual):
        return [f"{path}: {canonical(expected)[:200]} != {canonical(actual)[:200]}"]
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--record", action="store_true", help="write tests/golden/pipeline.json")
    args = parser.parse_args()
    root = args.out.resolve()
    shutil.rmtree(root, ignore_errors=True)  # a fresh registry: version numbers are compared
    root.mkdir(parents=True)
    ROOT[0] = str(root)
    os.environ["TRIAGE_HOME"] = str(root / "var")
    os.environ["BENTOML_HOME"] = str(root / "var" / "bentoml")
    os.environ["TRIAGE_HMAC_KEY"] = "golden-hmac-key"
    os.environ.pop("TRIAGE_API_KEYS", None)
    os.environ.pop("TRIAGE_AUDIT_URL", None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the work folder's own store, never a server
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    for name, value in {
        "BENTOML_DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }.items():
        os.environ[name] = value
    result = snapshot(root)
    text = json.dumps(_strip(result), sort_keys=True, indent=1, allow_nan=True, default=str)
    (root / "snapshot.json").write_text(text + "\n")
    if args.record:
        GOLDEN.write_text(text + "\n")
    print(f"snapshot: {root / 'snapshot.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
