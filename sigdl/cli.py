"""The `sigdl` command line: a user's first contact with SigDL.

Every command has `--help` and `--json` (a machine-readable result on stdout; progress goes to
stderr). Exit codes: 0 success, 1 a gate failed, 2 bad input with a one-line reason.

    sigdl models list
    sigdl train --model lenet-5 --dataset mnist --epochs 20 --out runs/lenet5
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import TyperException

from sigdl.core import __version__
from sigdl.core.errors import InputError, one_line
from sigdl.core.events import ProgressEvent
from sigdl.core.store import ArtifactNotFoundError

app = typer.Typer(
    help="SigDL: train, compress, retest on emulated targets, deploy to the edge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="The model zoo.", no_args_is_help=True)
data_app = typer.Typer(help="Data sets.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
targets_app = typer.Typer(help="Embedded target profiles.", no_args_is_help=True)
app.add_typer(targets_app, name="targets")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Folder to look in first.")]
RemoteOpt = Annotated[
    str | None,
    typer.Option("--remote", metavar="ADDRESS", help="Run on the stage's service (host:port)."),
]


def emit(result: object, as_json: bool, human: str) -> None:
    """Print the result: JSON on stdout with --json, else a human summary."""
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        typer.echo(human)


def err(message: str) -> None:
    typer.echo(message, err=True)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"sigdl {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version."
        ),
    ] = False,
) -> None:
    """SigDL: train, compress, retest on emulated targets, deploy to the edge."""


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """List the zoo's models with their default input and parameter counts."""
    import torch

    from sigdl.core import zoo

    rows = []
    for spec in zoo.list_models():
        with torch.device("meta"):  # shapes only: VGG-16 would fill 553 MB of weights
            net = zoo.build_model(spec.name)
        rows.append(
            {
                "name": spec.name,
                "input": [spec.channels, spec.input_size, spec.input_size],
                "classes": spec.classes,
                "parameters": zoo.count_parameters(net),
                "min_input_size": spec.min_input_size,
                "description": spec.description,
            }
        )
    lines = [f"{'name':16} {'input':12} {'classes':>7} {'parameters':>12}  description"]
    for r in rows:
        shape = "x".join(map(str, r["input"]))
        lines.append(
            f"{r['name']:16} {shape:12} {r['classes']:>7} {r['parameters']:>12,}  "
            f"{r['description']}"
        )
    emit(rows, as_json, "\n".join(lines))


@models_app.command("export")
def models_export(
    name: Annotated[str, typer.Argument(help="A zoo model name, or a checkpoint directory.")],
    onnx: Annotated[Path, typer.Option("--onnx", help="Where to write the ONNX model.")],
    input_size: Annotated[int | None, typer.Option(help="Input height = width.")] = None,
    channels: Annotated[int | None, typer.Option(help="Input channels.")] = None,
    classes: Annotated[int | None, typer.Option(help="Number of classes.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a zoo model (untrained) or a trained checkpoint to ONNX."""
    from sigdl.core import exporting

    result = exporting.export(name, onnx, input_size=input_size, channels=channels, classes=classes)
    emit(
        result,
        as_json,
        f"wrote {result['onnx']} ({result['bytes']:,} bytes, "
        f"input {result['input_shape']}, max |diff| vs PyTorch "
        f"{result['onnx_max_abs_diff']:.2e})",
    )


@data_app.command("list")
def data_list(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """List the data sets, where each was found, and their sizes."""
    from sigdl.core.datasets import list_datasets

    rows = list_datasets(data_dir)
    lines = [f"{'name':15} {'found':6} {'train':>7} {'test':>7}  where"]
    for r in rows:
        lines.append(
            f"{r['name']:15} {'yes' if r['found'] else 'no':6} "
            f"{r.get('train_size') or '-':>7} {r.get('test_size') or '-':>7}  "
            f"{r.get('where') or 'not found; searched ' + ', '.join(r['searched'])}"
        )
    emit(rows, as_json, "\n".join(lines))


def print_epoch(event: ProgressEvent) -> None:
    if event.kind != "epoch":
        return
    f = event.figures
    test = f" test_acc {f['test_accuracy']:.4f}" if f.get("test_accuracy") is not None else ""
    err(
        f"epoch {event.done}: loss {f['loss']:.4f} train_acc {f['train_accuracy']:.4f}"
        f"{test} ({f['images_per_s']:.0f} img/s)"
    )


def _opt(help_text: str):
    return typer.Option(help=f"{help_text} [default: as TrainConfig]")


@app.command()
def train(
    model: Annotated[str, typer.Option(help="Zoo model name (see `sigdl models list`).")],
    dataset: Annotated[str, typer.Option(help="Data set name (see `sigdl data list`).")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    epochs: Annotated[int, typer.Option(help="Passes over the training set.")] = 20,
    nproc: Annotated[int, typer.Option(help="Data-parallel processes (torchrun + DDP).")] = 1,
    batch_size: Annotated[int | None, _opt("Global batch size (64).")] = None,
    optimizer: Annotated[str | None, _opt("sgd (Nesterov momentum) or adam.")] = None,
    lr: Annotated[float | None, _opt("Peak learning rate (0.02).")] = None,
    weight_decay: Annotated[float | None, _opt("L2 weight decay (5e-4).")] = None,
    schedule: Annotated[str | None, _opt("cosine, step or constant (cosine).")] = None,
    warmup_epochs: Annotated[float | None, _opt("Linear warm-up epochs (0).")] = None,
    seed: Annotated[int | None, _opt("Seed for init and batch order (0).")] = None,
    input_size: Annotated[int | None, _opt("Model input size.")] = None,
    channels: Annotated[int | None, _opt("Model input channels.")] = None,
    target_accuracy: Annotated[float | None, _opt("Stop at this test accuracy.")] = None,
    max_train_samples: Annotated[int | None, _opt("Train on the first N samples.")] = None,
    data_dir: DataDirOpt = None,
    remote: RemoteOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a zoo model; write model.safetensors, model.json, model.onnx, report.json."""
    from services.training.stage import run_training
    from sigdl.core.training import TrainConfig

    given = {
        "batch_size": batch_size, "optimizer": optimizer, "lr": lr,
        "weight_decay": weight_decay, "schedule": schedule, "warmup_epochs": warmup_epochs,
        "seed": seed, "input_size": input_size, "channels": channels,
        "target_accuracy": target_accuracy, "max_train_samples": max_train_samples,
    }  # fmt: skip
    # Only options the user gave override TrainConfig's defaults, declared there once.
    cfg = TrainConfig(
        model=model, dataset=dataset, epochs=epochs,
        **{k: v for k, v in given.items() if v is not None},
    )  # fmt: skip
    if remote:
        from services.training.client import train_remote

        _local_only(data_dir=data_dir)
        report = train_remote(remote, cfg, out, nproc, on_event=print_epoch)
    else:
        report = run_training(
            cfg, out, nproc=nproc, data_dir=str(data_dir) if data_dir else None,
            on_event=print_epoch,
        )  # fmt: skip
    emit(report, as_json, _train_summary(report))


def _local_only(**options: object) -> None:
    """Options that name this machine's folders mean nothing to a --remote service."""
    given = [name.replace("_", "-") for name, value in options.items() if value is not None]
    if given:
        raise InputError(f"--{given[0]} cannot be used with --remote: the service finds its own")


def _train_summary(report: dict) -> str:
    m = report["metrics"]
    lines = [
        f"{report['model']} on {report['dataset']}: test accuracy "
        f"{m['test_accuracy']:.4f} (ONNX Runtime {m['onnx_test_accuracy']:.4f}), "
        f"{m['train_seconds']:.1f} s",
        f"artifacts: {report['artifacts']['checkpoint']}",
    ]
    if report.get("mlflow"):
        ml = report["mlflow"]
        lines.append(
            f"mlflow: run {ml['run_id']}, model {ml['registered_model']} "
            f"version {ml['version']} ({ml['tracking_uri']})"
        )
    return "\n".join(lines)


@app.command()
def compress(
    checkpoint_dir: Annotated[Path, typer.Argument(help="A `sigdl train` output directory.")],
    recipe: Annotated[str, typer.Option(help="Built-in recipe name or a YAML file.")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    dataset: Annotated[
        str | None, typer.Option(help="Data set for retraining (default: the checkpoint's).")
    ] = None,
    data_dir: DataDirOpt = None,
    remote: RemoteOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compress a checkpoint with a recipe; write model.sdc, model.onnx, report.json."""
    if Path(recipe).is_file():  # a malformed file fails in milliseconds, before torch loads
        from sigdl.core.yamlio import load_yaml_file

        load_yaml_file(recipe, where=recipe)
    from services.compression.stage import run_compression

    if remote:
        from services.compression.client import compress_remote

        _local_only(data_dir=data_dir)
        report = compress_remote(remote, checkpoint_dir, recipe, dataset, out, print_event)
    else:
        report = run_compression(
            checkpoint_dir, recipe, dataset, out, data_dir=str(data_dir) if data_dir else None,
            on_event=print_event,
        )  # fmt: skip
    m = report["metrics"]
    human = (
        f"{report['model']}: {m['dense_bytes']:,} -> {m['compressed_bytes']:,} bytes "
        f"({m['ratio']:.1f}x), accuracy {m['dense_accuracy']:.4f} -> "
        f"{m['onnx_test_accuracy']:.4f} (decoded model.onnx, ONNX Runtime)\n"
        f"artifacts: {report['artifacts']['sdc']}"
    )
    emit(report, as_json, human)


def print_event(event: ProgressEvent) -> None:
    if event.kind == "ladder":
        err(f"{event.figures['step']:>8}: accuracy {event.figures['accuracy']:.4f}")
    elif event.kind == "epoch":
        print_epoch(event)


@app.command()
def decompress(
    sdc_file: Annotated[Path, typer.Argument(help="A .sdc file written by `sigdl compress`.")],
    onnx: Annotated[Path, typer.Option("--onnx", help="Where to write the ONNX model.")],
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the exact weights of a .sdc file and write them as an ONNX model. A .sdc in a
    `sigdl compress` output is checked against its report.json first (the artifact chain)."""
    from sigdl.core import chain, onnx_io
    from sigdl.core.sdc import load_model

    if not sdc_file.is_file():
        raise InputError(f"{str(sdc_file)!r} does not exist")
    target = chain.check_not_recorded(onnx, "--onnx")
    if target == sdc_file.expanduser().resolve():
        raise InputError(f"--onnx {str(onnx)!r} is the input .sdc: expected another path")
    chain.verify_folder(sdc_file.parent, (sdc_file.name,) if sdc_file.name == "model.sdc" else ())
    model, meta = load_model(sdc_file)
    onnx_io.export_onnx(model, onnx, meta.input_shape, {"sigdl.model_json": meta.to_json()})
    result = {"sdc": str(sdc_file), "onnx": str(onnx), "model": meta.model,
              "input_shape": meta.input_shape, "sdc_sha256": chain.sha256_file(sdc_file),
              "onnx_sha256": chain.sha256_file(onnx)}  # fmt: skip
    emit(result, as_json, f"wrote {onnx} ({meta.model}, input {meta.input_shape})")


@app.command()
def deploy(
    source: Annotated[
        str,
        typer.Argument(metavar="RUN_OR_PACKAGE", help="A folder: path, file:// or s3:// URI."),
    ],
    target: Annotated[str, typer.Option(help="Target profile name (see `sigdl targets list`).")],
    fleet: Annotated[str, typer.Option(help="Fleet name: lowercase letters, digits, '-'.")],
    store: Annotated[
        str | None, typer.Option("--store", help="Store root (default: $SIGDL_HOME/artifacts).")
    ] = None,
    version: Annotated[str | None, typer.Option(help="Version (default: the next vN).")] = None,
    retest: Annotated[str | None, typer.Option(help="A retest report.json to include.")] = None,
    canary: Annotated[
        bool, typer.Option(help="Publish as the canary (`sigdl fleet promote` decides).")
    ] = False,
    rollout: Annotated[
        bool, typer.Option(help="Apply the agents' Kubernetes objects (SIGDL_EDGE_*) after.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option(help="With --rollout: publish and apply nothing, print the objects.")
    ] = False,
    replicas: Annotated[int, typer.Option(help="With --rollout: agents in all.")] = 1,
    canary_fraction: Annotated[
        float, typer.Option(help="With --rollout: share of the agents that are canaries.")
    ] = 0.0,
    remote: RemoteOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Package a run for a target and publish it as the fleet's current version."""
    from services.deploy.stage import run_deploy, summary

    if dry_run and not rollout:
        raise InputError("--dry-run previews a rollout: add --rollout")
    if remote and (rollout or canary):
        raise InputError("--rollout and --canary run here, not with --remote")
    if rollout:
        from services.deploy import rollout as ro
        from sigdl.core import settings

    if rollout and dry_run:
        from services.deploy.stage import preview_manifest

        root, manifest = preview_manifest(source, target, fleet, store, version, retest)
        objects = ro.render_rollout(
            ro.RolloutSpec.for_manifest(root, manifest, None, replicas, canary_fraction)
        )
        emit(objects, as_json, ro.to_yaml(objects).rstrip("\n"))
        return
    if remote:
        from services.deploy.client import deploy_remote

        result = deploy_remote(remote, source, target, fleet, store_root=store, version=version,
                               retest_report=retest)  # fmt: skip
    else:
        result = run_deploy(source, target, fleet, store_root=store, version=version,
                            retest_report=retest, canary=canary)  # fmt: skip
    human = summary(result)
    if rollout:
        spec = ro.RolloutSpec.from_settings(fleet, target, store, replicas, canary_fraction)
        applied = ro.apply_rollout(ro.render_rollout(spec), settings.SIGDL_EDGE_KUBE_CONTEXT.get())
        result["rollout"] = [f"{o['kind']} {o['metadata']['name']}" for o in applied]
        human += f"\napplied in {spec.namespace}: {', '.join(result['rollout'])}"
    emit(result, as_json, human)


@app.command()
def retest(
    model: Annotated[str, typer.Argument(help="model.onnx, a .sdc, or a train/compress --out.")],
    target: Annotated[str, typer.Option(help="Target profile, NAME or NAME:MODE.")],
    dataset: Annotated[str | None, typer.Option(help="Test set for accuracy.")] = None,
    precision: Annotated[
        str | None, typer.Option(help="fp32, fp16 or int8 [default: the target's native].")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="Cores used on `host`.")] = None,
    require: Annotated[
        list[str] | None, typer.Option(help="A requirement such as fps>=30 (repeatable).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write report.json and verdict.md here.")] = None,
    workers: Annotated[int, typer.Option(help="Processes sharing the test set.")] = 1,
    data_dir: DataDirOpt = None,
    remote: RemoteOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Retest a model on an emulated target; exit 1 when the gate fails."""
    from services.retest.gate import verdict_markdown
    from services.retest.stage import run_retest

    options = dict(dataset=dataset, precision=precision, threads=threads,
                   requirements=require or [], workers=workers)  # fmt: skip
    if remote:
        from services.retest.client import retest_remote

        _local_only(data_dir=data_dir)
        report = retest_remote(remote, model, target, out, print_stage, **options)
    else:
        report = run_retest(model, target, out, data_dir=data_dir, on_event=print_stage, **options)
    emit(report, as_json, verdict_markdown(report))
    if not report["verdict"]["passed"]:
        raise typer.Exit(1)


def print_stage(event: ProgressEvent) -> None:
    if event.done == event.total:
        label = event.figures.get("label")
        err(f"{event.kind}{f' {label}' if label else ''}: done")


@targets_app.command("list")
def targets_list(as_json: JsonOpt = False) -> None:
    """List the target profiles."""
    from services.retest.stage import list_targets

    rows = list_targets()
    lines = [f"{'name':16} {'emulation':11} {'precisions':16} description"]
    for r in rows:
        lines.append(f"{r['name']:16} {r['emulation']:11} {','.join(r['precisions']):16} "
                     f"{r['description']}")  # fmt: skip
    emit(rows, as_json, "\n".join(lines))


@targets_app.command("show")
def targets_show(
    name: Annotated[str, typer.Argument(help="Target profile, NAME or NAME:MODE.")],
    as_json: JsonOpt = False,
) -> None:
    """Show a target profile (with its power mode applied)."""
    import yaml

    from services.retest.stage import load_target
    from targets import profile_path

    profile = load_target(name)
    human = yaml.safe_dump(profile, sort_keys=False).rstrip()
    emit(profile, as_json, f"# from {profile_path(name)}\n{human}")


@targets_app.command("calibrate")
def targets_calibrate(
    target: Annotated[str, typer.Argument(help="The target to calibrate here: host.")],
    rounds: Annotated[int | None, typer.Option(help="Interleaved timing rounds.")] = None,
    threads: Annotated[
        str, typer.Option(help="Intra-op thread counts to calibrate, comma-separated.")
    ] = "1,2",
    out: Annotated[
        Path | None, typer.Option(help="Profile to write [default: $SIGDL_HOME/targets/host.yaml].")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure this machine and write its host profile, which then replaces the shipped one."""
    from services.retest.calibrate import CLI_ROUNDS, calibrate_host

    if target.strip().lower() != "host":
        raise InputError(f"target {target!r}: only 'host' is calibrated by measuring here")
    try:
        counts = tuple(int(t) for t in threads.split(","))
    except ValueError:
        raise InputError(f"--threads {threads!r}: expected counts such as 1,2") from None

    def progress(done: int, total: int) -> None:
        err(f"round {done}/{total}")

    rounds = CLI_ROUNDS if rounds is None else rounds
    summary = calibrate_host(out, rounds, counts, on_round=progress)
    cpu = summary["measured_on"]["cpu"]
    emit(summary, as_json, f"wrote {summary['profile']} (measured on {cpu})")


@targets_app.command("fit")
def targets_fit(
    target: Annotated[str, typer.Argument(help="The target to fit, e.g. arm-cortex-a72.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Profile to write (default: $SIGDL_HOME/targets/TARGET.yaml)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit a target's latency model to the published latencies of its calibration set
    (targets/measurements/TARGET.yaml, models outside the zoo only) and write the profile."""
    from services.retest.targetfit import fit_target

    summary = fit_target(target, out)
    emit(summary, as_json, f"wrote {summary['profile']}: {summary['entries']} published figures, "
         f"{summary['within_25pct']:.0%} within ±25%, worst {summary['worst_factor']:.2f}x, "
         f"interval x{summary['interval'][0]:.2f}-x{summary['interval'][1]:.2f}")  # fmt: skip


@app.command()
def lineage(
    model_name: Annotated[str, typer.Argument(help="Registered model name, e.g. lenet-5-mnist.")],
    as_json: JsonOpt = False,
) -> None:
    """The versions of a registered model, with the tags that link them."""
    from sigdl.core.lineage import open_lineage

    store = open_lineage()
    if store is None:
        raise InputError("MLflow tracking is off (SIGDL_MLFLOW_TRACKING_URI=off)")
    rows = store.versions(model_name)
    if not rows:
        raise InputError(f"no registered model {model_name!r} in {store.tracking_uri}")
    emit(rows, as_json, "\n".join([model_name, *_version_tree(model_name, rows)]))


def _version_tree(name: str, rows: list[dict]) -> list[str]:
    """Versions under the version they came from (the `parent_version` tag), with aliases."""
    by_parent: dict[str, list[dict]] = {}
    known = {f"{name}/{r['version']}" for r in rows}
    for r in rows:
        parent = r["tags"].get("sigdl.parent_version", "")
        by_parent.setdefault(parent if parent in known else "", []).append(r)

    def line(r: dict, depth: int) -> list[str]:
        tags = r["tags"]
        what = " ".join(
            f"{k.removeprefix('sigdl.')}={tags[k][:12] if k.endswith('digest') else tags[k]}"
            for k in ("sigdl.stage", "sigdl.iteration", "sigdl.candidate", "sigdl.target",
                      "sigdl.recipe_digest")
            if tags.get(k)
        )  # fmt: skip
        aliases = "".join(f" @{a}" for a in r["aliases"])
        out = [f"{'  ' * depth}v{r['version']}  {what}{aliases}"]
        for child in by_parent.get(f"{name}/{r['version']}", []):
            out += line(child, depth + 1)
        return out

    return [text for r in by_parent.get("", []) for text in line(r, 1)]


@app.command()
def run(
    config: Annotated[Path | None, typer.Option(help="YAML file of loop options.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory of this run.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the whole loop locally: `sigdl serve all` on loopback, the Kubeflow pipeline with
    kfp.local, one run per iteration until every target passes (exit 1: the budget ran out)."""
    from pipelines.controller import LoopConfig, run_loop
    from pipelines.local import EmbeddedServices, LocalRunner, artifact_roots
    from sigdl.core import settings

    cfg = LoopConfig.from_file(config) if config else LoopConfig()
    if out:
        cfg.out = str(out.expanduser().resolve())
    if cfg.out is None:
        cfg.out = str(settings.SIGDL_HOME.get() / "runs" / time_stamp())
    folder = Path(cfg.out)
    err(f"run: {folder} ({cfg.model} on {cfg.dataset}; targets {', '.join(cfg.targets)})")
    err("services: starting `sigdl serve all` on 127.0.0.1")
    with EmbeddedServices(folder / "services.log", artifact_roots(folder, cfg.store)) as services:
        err(f"services: serving on {services.address}")
        result = run_loop(cfg, LocalRunner(folder, on_line=err), services.address, on_line=err)
    tracking = settings.mlflow_tracking_uri()
    lines = [f"{'PASSED' if result.passed else 'NOT PASSED'}: {len(result.iterations)} "
             f"iteration(s) in {result.seconds:.0f} s"]  # fmt: skip
    for verdict in result.iterations:
        for target, row in verdict.targets.items():
            state = f"passed with {row['best']}" if row["passed"] else "failed"
            lines.append(f"  iteration {verdict.iteration} {target}: {state}")
    for target, row in result.deployed.items():
        lines.append(f"deployed: {target} {row['version']} ({row['candidate']}, fleet {cfg.fleet})")
    lines.append(f"report: {result.report} (and report.html, the plots beside it)")
    if tracking:
        lines.append(f"mlflow: mlflow ui --backend-store-uri {tracking}")
    emit(result.to_json(), as_json, "\n".join(lines))
    if not result.passed:
        raise typer.Exit(1)


def time_stamp() -> str:
    import time
    import uuid

    return f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


pipeline_app = typer.Typer(help="The Kubeflow pipeline of the loop.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")


@pipeline_app.command("compile")
def pipeline_compile(
    out: Annotated[Path, typer.Option(help="Where to write the IR YAML.")] = Path("cicd.yaml"),
) -> None:
    """Write the pipeline's IR YAML (upload it in the Kubeflow UI, or `submit`)."""
    from pipelines.cicd import compile_pipeline

    typer.echo(compile_pipeline(str(out)))


@pipeline_app.command("submit")
def pipeline_submit(
    host: Annotated[str, typer.Option(help="Kubeflow Pipelines API, e.g. http://localhost:8080")],
    config: Annotated[Path | None, typer.Option(help="YAML file of loop options.")] = None,
    iterate: Annotated[
        bool, typer.Option("--iterate", help="Start runs until every target passes.")
    ] = False,
    experiment: Annotated[str, typer.Option(help="Kubeflow experiment.")] = "sigdl",
    as_json: JsonOpt = False,
) -> None:
    """Submit the pipeline to Kubeflow Pipelines (`runs_uri` in the config: an s3:// prefix)."""
    from pipelines.cluster import submit

    cfg_path = str(config) if config else None
    result = submit(host, cfg_path, iterate=iterate, experiment=experiment, on_line=err)
    emit(result, as_json, "\n".join(f"{k}: {v}" for k, v in result.items()))
    if iterate and not result.get("passed"):
        raise typer.Exit(1)


@app.command()
def sensitivity(
    checkpoint_dir: Annotated[Path, typer.Argument(help="A `sigdl train` output directory.")],
    dataset: Annotated[str, typer.Option(help="Data set whose test split scores each cut.")],
    out: Annotated[
        Path | None, typer.Option(help="Write report.json and sensitivity.md here.")
    ] = None,
    sparsities: Annotated[
        str, typer.Option(help="Comma-separated fractions of each layer's weights to zero.")
    ] = "0.5,0.7,0.8,0.9,0.95",
    layers: Annotated[
        str | None, typer.Option(help="Comma-separated layer names (default: every conv/fc layer).")
    ] = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per-layer pruning sensitivity: test accuracy with one layer at a time magnitude-pruned
    to each sparsity, no retraining (where a recipe's per-layer sparsities can go)."""
    import time

    from services.compression.prune import SensitivityTable, find_layers
    from services.compression.prune import sensitivity as sweep
    from sigdl.core import atomic
    from sigdl.core.checkpoint import load_checkpoint
    from sigdl.core.datasets import load_dataset

    try:
        levels = [float(s) for s in sparsities.split(",") if s.strip()]
    except ValueError:
        raise InputError(
            f"--sparsities {sparsities!r}: expected comma-separated fractions, e.g. 0.5,0.8,0.9"
        ) from None
    model, meta = load_checkpoint(checkpoint_dir)
    data = load_dataset(dataset, str(data_dir) if data_dir else None)
    found = {layer.name: layer for layer in find_layers(model).values()}
    names = [n.strip() for n in (layers or "").split(",") if n.strip()] or list(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise InputError(f"--layers {', '.join(map(repr, unknown))}: not in {meta.model!r} "
                         f"(layers: {', '.join(found)})")  # fmt: skip
    if out is not None:
        out = atomic.check_out_dir(out, [checkpoint_dir])  # before the sweep, not after it
    started = time.perf_counter()
    accuracy: dict[str, list[float]] = {}
    for i, name in enumerate(names, 1):  # a layer at a time, for progress on big test sets
        one = sweep(model, data, meta, [name], levels)  # bad sparsities: InputError, no output
        accuracy[name] = one.accuracy[name]
        err(f"{name}: done ({i}/{len(names)}, {time.perf_counter() - started:.0f} s)")
    table = SensitivityTable(one.baseline, one.sparsities, accuracy)
    report = {
        "command": "sensitivity", "sigdl_version": __version__, "model": meta.model,
        "dataset": dataset, "checkpoint": str(checkpoint_dir.expanduser().resolve()),
        "test_samples": len(data.test.labels), "baseline_accuracy": table.baseline,
        "sparsities": table.sparsities,
        "layers": [{"name": name, "kind": found[name].kind,
                    "parameters": found[name].weight.numel(), "accuracy": accs}
                   for name, accs in table.accuracy.items()],
        "wall_seconds": time.perf_counter() - started,
    }  # fmt: skip
    if out is not None:
        report["artifacts"] = {"report": str(out / "report.json"),
                               "markdown": str(out / "sensitivity.md")}  # fmt: skip
        with atomic.staged_dir(out, [checkpoint_dir]) as stage:
            atomic.write_json(stage / "report.json", report)
            atomic.write_bytes(stage / "sensitivity.md", table.to_markdown().encode())
    head = f"{'layer':16} {'parameters':>10} " + " ".join(f"{100 * s:>6g}%" for s in levels)
    lines = [f"{meta.model} on {dataset}: dense accuracy {table.baseline:.4f}; accuracy with "
             "one layer pruned (no retraining)", head]  # fmt: skip
    for row in report["layers"]:
        accs = " ".join(f"{a:>7.4f}" for a in row["accuracy"])
        lines.append(f"{row['name']:16} {row['parameters']:>10,} {accs}")
    if out is not None:
        lines.append(f"wrote {out / 'report.json'} and {out / 'sensitivity.md'}")
    emit(report, as_json, "\n".join(lines))


@app.command()
def serve(
    stage: Annotated[str, typer.Argument(help="training, compression, retest, deploy or all.")],
    port: Annotated[
        int | None, typer.Option(help="Port (default: from SIGDL_<STAGE>_ADDR; all: training's).")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface (0.0.0.0 in a container).")] = "127.0.0.1",
) -> None:
    """Serve a stage's job API over gRPC (with health and reflection) until SIGTERM."""
    from services.grpc_common.server import serve as serve_stage

    raise typer.Exit(serve_stage(stage, host, port))


keys_app = typer.Typer(help="Signing keys of edge packages.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
fleet_app = typer.Typer(help="Fleets of edge devices: status and rollback.", no_args_is_help=True)
app.add_typer(fleet_app, name="fleet")
StoreOpt = Annotated[
    str | None, typer.Option("--store", help="Store root (default: $SIGDL_HOME/artifacts).")
]


@keys_app.command("generate")
def keys_generate(
    out: Annotated[Path, typer.Option(help="Folder for signing.key and signing.pub.")],
    as_json: JsonOpt = False,
) -> None:
    """Make an Ed25519 key pair: SIGDL_SIGNING_KEY=signing.key for deploy, SIGDL_VERIFY_KEY=
    signing.pub for edge agents. Keep the private key out of packages and images."""
    from sigdl.core import signing

    private, public = signing.generate_keys(out)
    key_id = signing.key_id(signing.load_public_key(public))
    result = {"private_key": str(private), "public_key": str(public), "key_id": key_id}
    emit(result, as_json, f"wrote {private} (private, mode 0600) and {public} (key {key_id})")


@fleet_app.command("status")
def fleet_status(
    name: Annotated[str, typer.Argument(help="Fleet name.")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Versions per target, which is current, and what each edge agent reports."""
    from services.deploy.stage import fleet_status as status_of
    from services.deploy.stage import status_summary

    status = status_of(name, store)
    emit(status, as_json, status_summary(status))


@fleet_app.command("rollback")
def fleet_rollback(
    name: Annotated[str, typer.Argument(help="Fleet name.")],
    target: Annotated[str, typer.Option(help="Target profile name.")],
    to: Annotated[
        str | None, typer.Option("--to", help="Version (default: the one current before).")
    ] = None,
    store: StoreOpt = None,
    remote: RemoteOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Point the fleet's `current` back at an earlier, verified version."""
    from services.deploy.stage import rollback, summary

    if remote:
        from services.deploy.client import rollback_remote

        result = rollback_remote(remote, name, target, store_root=store, to_version=to)
    else:
        result = rollback(name, target, store_root=store, to_version=to)
    emit(result, as_json, summary(result))


@fleet_app.command("retrain")
def fleet_retrain(
    name: Annotated[str, typer.Argument(help="Fleet name.")],
    target: Annotated[str, typer.Option(help="Target profile name.")],
    threshold: Annotated[
        int, typer.Option(help="New labelled samples that start a retraining run.")
    ] = 100,
    samples: Annotated[
        str | None,
        typer.Option(help="The edge site's store the agents upload to (SIGDL_EDGE_STORE)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML file of the retraining run's loop options.")
    ] = None,
    services: Annotated[
        str | None,
        typer.Option(help="The edge site's services (host:port); default: start them here."),
    ] = None,
    watch: Annotated[
        float, typer.Option(help="Look again every this many seconds (0: look once).")
    ] = 0.0,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """At the edge site: when the fleet's target has collected --threshold new labelled samples,
    retrain where the data lives, warm-started from the deployed version, with every labelled
    sample added; the result is gated and deployed like any run (exit 1: it did not pass)."""
    import time

    from pipelines.controller import LoopConfig
    from pipelines.trigger import TriggerConfig, retrain_if_due, summary
    from sigdl.core import settings
    from sigdl.core import store as artifact_store

    edge = samples or settings.SIGDL_EDGE_STORE.get()
    if not edge:
        raise InputError("--samples (or SIGDL_EDGE_STORE): expected the edge site's store URI")
    if watch < 0:
        raise InputError(f"--watch {watch}: expected seconds >= 0")
    loop = LoopConfig.from_file(config) if config else LoopConfig()
    if loop.out is None:
        loop.out = str(settings.SIGDL_HOME.get() / "retrain")
    fleet_root = artifact_store.as_uri(store) if store else artifact_store.local_artifact_root()
    cfg = TriggerConfig(name, target, artifact_store.as_uri(edge).rstrip("/"), fleet_root,
                        threshold, loop)  # fmt: skip
    while True:
        result = retrain_if_due(cfg, lambda loop: _run_retraining(loop, cfg, services), err)
        if not watch or result.started:
            break
        time.sleep(watch)
    emit(result.to_json(), as_json, summary(result))
    if result.started and not result.run["passed"]:
        raise typer.Exit(1)


def _run_retraining(loop, cfg, services: str | None):
    """One retraining run with kfp.local: on `services`, or on `sigdl serve all` started here
    and allowed to read the samples and the checkpoint to start from."""
    from pipelines.controller import run_loop
    from pipelines.local import EmbeddedServices, LocalRunner, artifact_roots

    folder = Path(loop.out)
    folder.mkdir(parents=True, exist_ok=True)
    if services:
        return run_loop(loop, LocalRunner(folder, on_line=err), services, on_line=err)
    roots = [*artifact_roots(folder, loop.store), cfg.samples_uri, loop.train["init_checkpoint"]]
    with EmbeddedServices(folder / "services.log", roots) as embedded:
        err(f"services: serving on {embedded.address}")
        return run_loop(loop, LocalRunner(folder, on_line=err), embedded.address, on_line=err)


@fleet_app.command("promote")
def fleet_promote(
    name: Annotated[str, typer.Argument(help="Fleet name.")],
    target: Annotated[str, typer.Option(help="Target profile name.")],
    deadline: Annotated[
        float, typer.Option(help="Seconds the canary agents have to report healthy.")
    ] = 300.0,
    min_healthy: Annotated[int, typer.Option(help="Canary agents that must serve it.")] = 1,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Wait for the fleet's canary agents to report healthy on the canary, then make it current;
    otherwise roll the canary back (exit 1)."""
    from services.deploy.canary import promote_canary, summary

    decision = promote_canary(name, target, store, deadline_s=deadline, min_healthy=min_healthy)
    emit(decision.to_dict(), as_json, summary(decision))
    if decision.action != "promoted":
        raise typer.Exit(1)


@app.command("edge-agent")
def edge_agent(
    fleet: Annotated[str, typer.Option(help="Fleet to follow.")],
    target: Annotated[str, typer.Option(help="This device's target profile.")],
    store: Annotated[str, typer.Option("--store", help="Store root the fleet is published in.")],
    port: Annotated[
        int, typer.Option(help="Port of EdgeInferenceService (0: a free one).")
    ] = 50060,
    host: Annotated[str, typer.Option(help="Interface (0.0.0.0 in a container).")] = "127.0.0.1",
    canary: Annotated[
        bool, typer.Option(help="Follow the fleet's canary while one exists (SIGDL_AGENT_CANARY).")
    ] = False,
) -> None:
    """Serve the fleet's current verified package (ONNX Runtime) until SIGTERM; refuse any
    package whose digests or signature (SIGDL_VERIFY_KEY) do not match."""
    from services.edge.server import serve as serve_edge

    raise typer.Exit(serve_edge(fleet, target, store, host, port, canary))


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps bad input to exit 2 with one line, never a traceback."""
    try:
        from sigdl.core import settings

        args = sys.argv[1:] if argv is None else argv
        if not {"--help", "-h", "--version"} & set(args) and args:  # help works whatever is set
            settings.validate()  # SIGDL_HOME="" would write into the current folder
        # click returns a command's typer.Exit code (e.g. 1: a gate failed) when not standalone
        code = app(args=argv, standalone_mode=False, prog_name="sigdl")
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err("aborted")
        return 130
    except TyperException as exc:  # typer's (vendored) click usage errors: bad option, value
        if exc.format_message():  # empty when `sigdl` alone printed the help
            err(f"error: {exc.format_message()}")
        return getattr(exc, "exit_code", 2)
    except (InputError, ArtifactNotFoundError) as exc:  # a named artifact missing: bad input
        # store, setting, profile, data set and --remote errors are InputErrors too; one line,
        # short, whatever a forged file put in the message
        err(f"error: {one_line(str(exc), 500)}")
        return 2
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
