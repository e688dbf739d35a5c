"""The ``survival-model`` command line.

``run`` is the main job: make the default synthetic cohort when it is missing, run the pipeline flow
as far as it exists, print where the results are. ``generate`` writes a synthetic cohort, ``check``
validates ``params.yaml`` and shows what each institution holds, ``serve`` serves scheduled retraining
and on-demand prediction (``flows/deploy.py``), ``predict`` predicts new patients with the registered
model, ``models list|promote|rollback`` manage its versions, ``ui`` starts/stops the local Prefect server
and MLflow UI.

What the commands print (result tables, the progress bars while a flow runs) is rendered by
``flows/render.py``; this module parses the options and runs the flows.

Prefect reads its settings when it is first imported, so this module imports Prefect (through
``flows``) only inside the commands, after :func:`prefect_environment` has set them.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, NoReturn, get_args

import pandas as pd
import typer
import yaml

from flows.render import (
    cohort_progress,
    console,
    print_check,
    print_predictions,
    print_result,
    print_serving,
    print_versions,
    run_display,
)
from survival_model import local_servers
from survival_model.config import (
    REALISTIC_OVERLAY,
    ClinicalField,
    Params,
    load_params,
    load_services,
    overlay_overrides,
    parse_override,
)
from survival_model.errors import ConfigError, SurvivalModelError
from survival_model.ingest.discovery import discover_cases
from survival_model.synthetic.cohort import GeneratorConfig, existing_cohort, generate_cohort
from survival_model.tracking import Tracker

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Survival prediction for brain metastases: cached Prefect flows tracked in MLflow.")
ui_app = typer.Typer(no_args_is_help=True, help="Local Prefect server + UI and MLflow UI.")
app.add_typer(ui_app, name="ui")
models_app = typer.Typer(no_args_is_help=True, help="Registered model versions: list, promote, rollback.")
app.add_typer(models_app, name="models")

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="The run configuration.")]
RealisticOption = Annotated[bool, typer.Option(
    "--realistic", help="BraTS-size cohort: 240x240x155 at 1 mm, preprocessed at 1 mm (regenerates data/synthetic).")]
OverlayOption = Annotated[list[Path] | None, typer.Option(
    "--overlay", help="A params overlay file (only the settings it changes, nested as in params.yaml), laid over "
                      "the params file before --set; repeatable.")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a setting: section.key=value (YAML value).")
]
VerboseOption = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Print every log line (Prefect's task states) instead of one progress bar per stage.")]
BackboneOption = Annotated[str | None, typer.Option(
    "--backbone", help="The network's timm backbone (the paper's: resnet50, efficientnet_b0); "
                       "same as --set training.network.backbone=NAME.")]


def _load(params_path: Path, overrides: list[str] | None, realistic: bool = False,
          overlays: list[Path] | None = None) -> tuple[Params, dict[str, Any]]:
    """The params file with its overlays laid over it in order (``--realistic`` first), then ``--set``."""
    files = [*([REALISTIC_OVERLAY] if realistic else []), *(overlays or [])]
    pairs: dict[str, Any] = {}
    for file in files:
        pairs.update(overlay_overrides(file))
    pairs.update(dict(parse_override(o) for o in overrides or []))
    return load_params(params_path, pairs), pairs


#: Exit codes: 0 success, 1 a failed run or bad data (a server down, a corrupt file), 2 a usage error (a bad
#: option or setting, a missing params file; typer's own usage errors exit 2 too).
EXIT_FAILED, EXIT_USAGE = 1, 2


def _fail(exc: SurvivalModelError) -> NoReturn:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED)


def _version(value: bool) -> None:
    if value:
        try:
            console.print(f"survival-model {version('survival-model')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            console.print("survival-model (not installed: run scripts/bootstrap.sh)")
        raise typer.Exit(0)


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    """Options before any command (the app's help is the Typer's)."""


def _generator_config(params: Params, workers: int | None = None) -> GeneratorConfig:
    s = params.synthetic
    return GeneratorConfig(out_dir=s.out_dir, seed=s.seed, patients=dict(s.patients), shape=s.shape,
                           spacing_mm=s.spacing_mm, bad_patients=s.bad_patients, image_effect=s.image_effect,
                           workers=workers or max(1, os.cpu_count() or 1))


def _generate(config: GeneratorConfig) -> None:
    with cohort_progress(config.out_dir) as update:
        generate_cohort(config, progress=update)


def _log_file(params: Params, command: str) -> Path:
    return params.work_dir / "logs" / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"


def ensure_synthetic_cohort(params: Params) -> None:
    """Generate the default cohort when an institution reads from it and it is missing or stale."""
    out_dir = params.synthetic.out_dir
    reads_synthetic = any(out_dir in inst.images.root.parents or out_dir == inst.images.root
                          for inst in params.institutions.values())
    if not reads_synthetic:
        return
    config = _generator_config(params)
    manifest = existing_cohort(out_dir)
    if manifest is not None and all(manifest.get(k) == v for k, v in config.identity().items()):
        return
    reason = "missing" if manifest is None else "made with other settings"
    console.print(f"the synthetic cohort in {out_dir} is {reason}: generating it (first run only)")
    _generate(config)


def default_services_file(params_path: Path) -> Path:
    """``infra/local/services.yaml`` beside the params file, else the one in this repository."""
    beside = params_path.resolve().parent / "infra" / "local" / "services.yaml"
    return beside if beside.is_file() else Path(__file__).resolve().parents[1] / "infra" / "local" / "services.yaml"


def prefect_environment(
    params: Params, services_file: Path | None = None, warm_up: Callable[[], None] | None = None
) -> str:
    """Point Prefect at the right API before it is imported; returns a description for the user.

    A user's own ``PREFECT_API_URL`` wins. Otherwise the local server (``ui start``) is used when it
    answers; when it does not and ``services_file`` is given, it is started and left running (the
    UI shows this run, and the next run skips the server's ~20 s start), and ``warm_up`` (e.g. the
    heavy imports) runs while it boots. When its port is taken by another program, or no
    ``services_file`` is given, Prefect starts its temporary server (given a longer start-up timeout:
    the 20 s default expired on first runs on 2-core machines). Prefect's home (its SQLite database)
    is ``servers.home``/prefect either way, so ``ui start`` later shows these runs too.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars between the stages' bars
    # the library logs through stdlib logging (it never imports Prefect): its lines (epochs, quarantines, the
    # device a fold trains on) join the task runs' logs in the Prefect UI
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "survival_model")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # e.g. the cohort generator's lines
    if os.environ.get("PREFECT_API_URL"):
        return f"Prefect API {os.environ['PREFECT_API_URL']} (from PREFECT_API_URL)"
    home = local_servers.prefect_home(params)
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home))
    up = local_servers.endpoints(params)
    if "prefect" in up:
        os.environ["PREFECT_API_URL"] = f"{up['prefect']}/api"
        return f"Prefect server {up['prefect']} (local; `survival-model ui stop` stops it)"
    if services_file is not None:
        host, port = params.servers.host, params.servers.prefect_port
        if local_servers.port_in_use(host, port):
            console.print(f"[yellow]{host}:{port} is taken by another program (servers.prefect_port); "
                          "using Prefect's temporary server[/]")
        else:
            running = local_servers.launch(params, load_services(services_file), only=["prefect"])
            url = running["prefect"].ui_url
            os.environ["PREFECT_API_URL"] = f"{url}/api"
            with console.status("starting the local Prefect server (first run only)"):
                if warm_up is not None:
                    warm_up()  # in this process, while the server boots in its own
                try:
                    local_servers.wait_healthy(params, running)
                except local_servers.ServerError as exc:
                    raise local_servers.ServerError(
                        f"{exc} (or run with --temporary-server to use Prefect's temporary server)") from None
            return f"Prefect server {url} (started now and left running; `survival-model ui stop` stops it)"
    return "Prefect's temporary server (run `survival-model ui start` to keep a UI)"


def _warm_up(params: Params) -> None:
    """What a run needs before its first task (Prefect and the flows imported, MLflow's store opened,
    its database created on a first run: ~8 s on 2 cores), done early to overlap the local server's
    start."""
    import flows.pipeline  # noqa: F401  # Prefect: imported after prefect_environment set its settings

    Tracker.from_params(params)


@app.command()
def run(
    params_path: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    realistic: RealisticOption = False,
    overlay: OverlayOption = None,
    generate: Annotated[bool, typer.Option(help="Make the default synthetic cohort if it is missing.")] = True,
    temporary_server: Annotated[bool, typer.Option(
        "--temporary-server", help="Use Prefect's temporary server for this run (servers.prefect_api).")] = False,
    backbone: BackboneOption = None,
    verbose: VerboseOption = False,
) -> None:
    """The main job: synthetic cohort if missing -> pipeline flow -> where the results are."""
    try:
        extra = [f"training.network.backbone={backbone}"] if backbone else []
        params, pairs = _load(params_path, [*(overrides or []), *extra], realistic, overlay)
        if generate:
            ensure_synthetic_cohort(params)
        local = params.servers.prefect_api == "local" and not temporary_server
        where = prefect_environment(params, default_services_file(params_path) if local else None,
                                    lambda: _warm_up(params))
    except SurvivalModelError as exc:
        _fail(exc)
    console.print(f"orchestration: {where}")
    up = local_servers.endpoints(params)
    if "mlflow" in up and not params.tracking.ui_url:
        pairs["tracking.ui_url"] = up["mlflow"]
    from flows.pipeline import pipeline  # Prefect: imported after prefect_environment set its settings
    from flows.runners import task_runner_for  # Prefect: likewise

    flow = pipeline.with_options(task_runner=task_runner_for(params))
    log_file = _log_file(params, "run")
    try:
        with run_display(log_file, verbose):
            result = flow(params_path=str(params_path.resolve()), overrides=pairs or None)
    except SurvivalModelError as exc:
        _fail(exc)
    print_result(result, up)
    console.print(f"log: {log_file}")


@app.command()
def serve(
    params_path: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    generate: Annotated[bool, typer.Option(help="Make the default synthetic cohort if it is missing.")] = True,
) -> None:
    """Serve scheduled retraining (registry.schedule) and on-demand prediction until stopped (Ctrl+C)."""
    try:
        params, pairs = _load(params_path, overrides)
        where = prefect_environment(params, default_services_file(params_path), _import_deployments)
        api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
        if not api:  # the local server's port is taken by another program
            raise local_servers.ServerError(
                "serving needs a long-lived Prefect server: Prefect's temporary server cannot run schedules. "
                f"Free {params.servers.host}:{params.servers.prefect_port} or choose another port "
                "(--set servers.prefect_port=PORT), or set PREFECT_API_URL to a running Prefect server")
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=10):  # noqa: S310 - the user's Prefect API
                pass
        except urllib.error.HTTPError:
            pass  # something answers (e.g. asks for credentials): Prefect's client will say more
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise local_servers.ServerError(
                f"PREFECT_API_URL={api} does not answer ({exc}): start that server, or unset PREFECT_API_URL "
                "to use the local one (Prefect's temporary server cannot run schedules)") from None
        if generate:
            ensure_synthetic_cohort(params)
        from flows import deploy  # Prefect: imported after prefect_environment set its settings

        served = deploy.deployments(params, params_path, pairs or None)
        schedule = params.registry.schedule
        upcoming = deploy.next_run(schedule)
    except SurvivalModelError as exc:
        _fail(exc)
    retrain, predict = served
    print_serving(where, api, deploy.full_name(retrain), deploy.full_name(predict), schedule, upcoming, params_path)
    deploy.serve_deployments(params, params_path, pairs or None, served)


def _import_deployments() -> None:
    """Prefect and the flows imported while the local server boots."""
    import flows.deploy  # noqa: F401  # Prefect: imported after prefect_environment set its settings


@app.command()
def generate(
    params_path: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    realistic: RealisticOption = False,
    overlay: OverlayOption = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: synthetic.out_dir).")] = None,
    workers: Annotated[int | None, typer.Option(help="Processes (default: all cores).")] = None,
    force: Annotated[bool, typer.Option(help="Regenerate even if the same cohort is there.")] = False,
) -> None:
    """Write a synthetic cohort (settings from the `synthetic` section, overridable with --set)."""
    try:
        params, _ = _load(params_path, overrides, realistic, overlay)
        config = _generator_config(params, workers)
        if out is not None:
            config = GeneratorConfig(**{**config.__dict__, "out_dir": out.resolve()})
        manifest = existing_cohort(config.out_dir)
        if not force and manifest is not None and all(manifest.get(k) == v for k, v in config.identity().items()):
            console.print(f"{config.out_dir} already holds this cohort (use --force to regenerate)")
            return
        _generate(config)
    except SurvivalModelError as exc:
        _fail(exc)


@app.command()
def check(params_path: ParamsOption = Path("params.yaml"), overrides: SetOption = None,
          overlay: OverlayOption = None,
          show: Annotated[bool, typer.Option("--show", help="Print every setting in effect (the code's "
                                             "defaults, the params file, overlays and --set) as YAML.")] = False,
          ) -> None:
    """Validate params.yaml (with its overlays) and show what each institution's folders hold."""
    try:
        params, _ = _load(params_path, overrides, overlays=overlay)
    except SurvivalModelError as exc:
        _fail(exc)
    if show:
        typer.echo(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, width=120))
    found: dict[str, str] = {}
    for name, inst in params.institutions.items():
        try:
            found[name] = str(len(discover_cases(name, inst.images)))
        except SurvivalModelError as exc:
            found[name] = f"[red]{exc}[/]"
    print_check(params_path, params, found)


@app.command()
def predict(
    params_path: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    model: Annotated[str, typer.Option(help="Registered alias (champion, challenger) or version number.")] = "champion",
    gradcam: Annotated[bool, typer.Option("--gradcam", help="Also write a Grad-CAM figure per patient.")] = False,
    temporary_server: Annotated[bool, typer.Option(
        "--temporary-server", help="Use Prefect's temporary server for this run (servers.prefect_api).")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Also copy the predictions (and Grad-CAM figures) into this folder.")] = None,
    input_dir: Annotated[Path | None, typer.Option(
        "--input", "-i", help="Predict the patients in this folder instead of the params file's institutions: "
        "BraTS-METS layout (<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz; skull-stripped, co-registered) and a "
        "clinical.csv with a case_id column and the canonical field names (docs/registry.md).")] = None,
    verbose: VerboseOption = False,
) -> None:
    """Predict the patients the params file's institutions declare (new patients: clinical.survival may be
    left out), or those in an --input folder, with the registered model: risk, risk group, survival at
    registry.horizons_months, median."""
    try:
        if input_dir is not None:
            overrides = [*(overrides or []), f"institutions={json.dumps(input_institution(input_dir))}"]
        params, pairs = _load(params_path, overrides)
        local = params.servers.prefect_api == "local" and not temporary_server
        where = prefect_environment(params, default_services_file(params_path) if local else None)
    except SurvivalModelError as exc:
        _fail(exc)
    console.print(f"orchestration: {where}")
    from flows.predict import predict as predict_flow  # Prefect: imported after prefect_environment set its settings

    try:
        with run_display(_log_file(params, "predict"), verbose):
            result = predict_flow(params_path=str(params_path.resolve()), overrides=pairs or None, model=model,
                                  gradcam=gradcam)
        exported = result.export(out) if out is not None else None
    except SurvivalModelError as exc:
        _fail(exc)
    print_predictions(result)
    if exported is not None:
        console.print(f"copied to:   {exported}")


#: The institution name of an --input folder's patients.
INPUT_SITE = "input"
#: The canonical clinical fields an --input folder's clinical.csv may hold, under these names.
CLINICAL_FIELDS: tuple[str, ...] = get_args(ClinicalField)


def input_institution(folder: Path) -> dict[str, Any]:
    """The declaration of a plain input folder (``predict --input``): BraTS-METS files per case and a
    ``clinical.csv`` whose columns carry the canonical names (``case_id`` and any of the clinical fields)."""
    folder = folder.resolve()
    clinical = folder / "clinical.csv"
    if not folder.is_dir():
        raise ConfigError(f"--input {folder}: not a folder")
    if not clinical.is_file():
        raise ConfigError(f"--input {folder}: no clinical.csv (a case_id column and the clinical fields, "
                          f"named {', '.join(CLINICAL_FIELDS)})")
    header = [str(c).strip() for c in pd.read_csv(clinical, nrows=0, encoding="utf-8-sig").columns]
    if "case_id" not in header:
        raise ConfigError(f"--input {clinical}: no case_id column (found {', '.join(header) or 'none'})")
    columns = {c: c for c in header if c in CLINICAL_FIELDS}
    return {INPUT_SITE: {"images": {"layout": "brats", "root": str(folder)}, "labels": "brats_mets",
                         "acquisition": {"skull_stripped": True, "bias_corrected": True, "co_registered": True},
                         "clinical": {"path": str(clinical), "id_column": "case_id", "columns": columns}}}


def _registry(params_path: Path, params: Params | None = None) -> Any:
    """The registry ``params`` (loaded from ``params_path`` when not given) declare."""
    from survival_model.registry.registry import Registry  # sksurv via the gate (~0.8 s): only the models commands

    if params is None:
        params, _ = _load(params_path, None)
    return Registry(Tracker.from_params(params).client, params.registry.model_name)


@contextmanager
def _registry_locked(params_path: Path) -> Iterator[Any]:
    """The registry under the lock the registry flow holds while it registers and gates (a hand promotion or
    rollback in the middle of a gate would be overwritten by it, or gate against a champion that moved)."""
    from survival_model.registry.registry import lock_file, registry_lock  # sksurv via the gate: models commands only

    params, _ = _load(params_path, None)
    lock = lock_file(params.work_dir, params.registry.model_name)

    def waiting(holder: str) -> None:
        console.print(f"a registry run ({holder}) holds {lock}: waiting for it to finish")

    with registry_lock(lock, waiting):
        yield _registry(params_path, params)


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown user"


ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="Why (recorded with the change).")]


@models_app.command("list")
def models_list(params_path: ParamsOption = Path("params.yaml")) -> None:
    """Every registered version with its aliases, test metrics and the gate's decision."""
    try:
        reg = _registry(params_path)
        frame = reg.table()
    except SurvivalModelError as exc:
        _fail(exc)
    if frame.empty:
        console.print(f"model {reg.name!r} has no version yet (run the pipeline: `survival-model run`)")
        return
    print_versions(reg.name, frame, reg.history())


@models_app.command("promote")
def models_promote(version: Annotated[int, typer.Argument(help="The version to make champion.")],
                   reason: ReasonOption, params_path: ParamsOption = Path("params.yaml")) -> None:
    """Make a version the champion by hand (no gate), recording who and why."""
    try:
        with _registry_locked(params_path) as reg:
            done = reg.set_champion(version, reason=reason, by=_who())
    except SurvivalModelError as exc:
        _fail(exc)
    console.print(f"{reg.name} version {done.version} is now champion ({reason})")


@models_app.command("rollback")
def models_rollback(reason: ReasonOption, params_path: ParamsOption = Path("params.yaml")) -> None:
    """Give the champion alias back to the version that held it before the current one."""
    try:
        with _registry_locked(params_path) as reg:
            done = reg.rollback(reason=reason, by=_who())
    except SurvivalModelError as exc:
        _fail(exc)
    console.print(f"{reg.name}: champion rolled back to version {done.version}")


@ui_app.command("start")
def ui_start(
    params_path: ParamsOption = Path("params.yaml"),
    services: Annotated[Path, typer.Option(help="Services file.")] = Path("infra/local/services.yaml"),
) -> None:
    """Start the Prefect server (with its UI) and the MLflow UI on the embedded stores."""
    try:
        params, _ = _load(params_path, None)
        spec_path = services if services.is_absolute() else params_path.resolve().parent / services
        running = local_servers.start(params, load_services(spec_path))
    except SurvivalModelError as exc:
        _fail(exc)
    for name, service in running.items():
        console.print(f"{name:8s} {service.ui_url}   (log: {service.log or 'already running'})")
    console.print("later `survival-model run` commands report to these servers; stop them with "
                  "`survival-model ui stop`")


@ui_app.command("stop")
def ui_stop(params_path: ParamsOption = Path("params.yaml")) -> None:
    """Stop the servers started by `ui start` for this work directory."""
    try:
        params, _ = _load(params_path, None)
    except SurvivalModelError as exc:
        _fail(exc)
    stopped = local_servers.stop(params)
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@ui_app.command("status")
def ui_status(params_path: ParamsOption = Path("params.yaml")) -> None:
    """Show the local servers and whether they answer."""
    try:
        params, _ = _load(params_path, None)
    except SurvivalModelError as exc:
        _fail(exc)
    found = local_servers.status(params)
    if not found:
        console.print("no local server recorded (start them with `survival-model ui start`)")
    for name, (service, ok) in found.items():
        console.print(f"{name:8s} {service.ui_url}  {'[green]up[/]' if ok else '[red]down[/]'}")


def main() -> None:  # pragma: no cover - console-script shim
    # Logging is configured by Prefect when the flows are imported (its console format, and its API
    # handler inside runs); library warnings reach it through the root logger.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
