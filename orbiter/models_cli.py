"""`orbiter models train|export|register|alias|list`: the model lifecycle from a shell.

Training and export need the ``models`` extra (torch); they are imported only by the commands
that use them, so ``orbiter --help`` and the other commands stay quick.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_models_parser", "add_registry_options", "open_registry", "run_models"]

_DIGITS = ("digits-edge", "digits-cloud")


def add_registry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        default=os.environ.get("ORBITER_DATA_DIR"),
        help="registry in DIR/mlflow.db, model files in DIR/artifacts (default: $ORBITER_DATA_DIR)",
    )
    p.add_argument(
        "--registry",
        metavar="URI",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="an MLflow tracking URI instead (default: $MLFLOW_TRACKING_URI); model files then "
        "go to --artifacts",
    )
    p.add_argument(
        "--artifacts",
        metavar="URL",
        default=None,
        help="artifact store: file:///DIR or s3://BUCKET/PREFIX?endpoint=HOST:PORT "
        "(credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)",
    )


def add_models_parser(sub: Any) -> None:
    models = sub.add_parser(
        "models",
        help="train, export, register and list models",
        description="Train the built-in digits models, export them to ONNX, and keep them in "
        "the registry (MLflow) with their lineage and aliases.",
    )
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    train = msub.add_parser(
        "train",
        help="train a digits model (scikit-learn's load_digits, seeded)",
        description="Train digits-edge (4x4-pooled input, the small one) or digits-cloud on "
        "the seeded split of scikit-learn's digits. Writes OUT/model.pt (weights) and "
        "OUT/metrics.json (per-epoch metrics and the held-out accuracy).",
    )
    train.add_argument("model", choices=_DIGITS, help="which model")
    train.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    train.add_argument("--seed", type=int, default=0, help="seed of split, weights, batches")
    train.add_argument("--epochs", type=int, default=None, help="default: the model's recipe")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    export = msub.add_parser(
        "export",
        help="export trained weights to one ONNX file, checked against torch",
        description="Export a model to a self-contained ONNX file (pinned opset, dynamic "
        "batch) and check onnxruntime against torch on the held-out digits within --atol. "
        "--int8 also writes an int8-quantized copy and reports its accuracy change.",
    )
    export.add_argument("model", choices=(*_DIGITS, "resnet18"), help="architecture")
    export.add_argument(
        "--weights", type=Path, metavar="FILE", help="model.pt from `train` (resnet18: random)"
    )
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="ONNX file")
    export.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    export.add_argument("--atol", type=float, default=1e-4, help="allowed |onnx - torch|")
    export.add_argument("--int8", type=Path, metavar="FILE", help="also write an int8 model")

    register = msub.add_parser(
        "register",
        help="register an ONNX file as the next version of a model",
        description="Store FILE (content-addressed) and register it as the next version of "
        "NAME, with where it came from.",
    )
    register.add_argument("name")
    register.add_argument("file", type=Path)
    register.add_argument("--dataset", help="the data it was trained on, e.g. digits@seed0")
    register.add_argument("--parent", type=int, metavar="VERSION", help="the version it refines")
    register.add_argument("--job", help="the job that produced it, e.g. default/il-job")
    register.add_argument(
        "--metrics", type=Path, metavar="FILE", help="metrics.json from `train`: logged as a run"
    )
    register.add_argument(
        "--alias", action="append", default=[], help="set this alias (repeatable), e.g. candidate"
    )
    add_registry_options(register)

    alias = msub.add_parser("alias", help="point an alias (e.g. production) at a version")
    alias.add_argument("name")
    alias.add_argument("alias")
    alias.add_argument("version", type=int)
    add_registry_options(alias)

    listing = msub.add_parser(
        "list", help="list models, or one model's versions with their lineage"
    )
    listing.add_argument("name", nargs="?", help="show this model's versions")
    listing.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_registry_options(listing)


def open_registry(args: argparse.Namespace) -> Any:
    """The registry the options name (also used by `orbiter serve --model NAME@ALIAS`)."""
    from orbiter.models.artifacts import open_store
    from orbiter.models.registry import Registry

    store = open_store(args.artifacts) if args.artifacts else None
    if args.registry is None and args.data_dir is None:
        raise SystemExit("orbiter: give --data-dir DIR or --registry URI (or set ORBITER_DATA_DIR)")
    return Registry(args.registry, data_dir=args.data_dir, artifacts=store)


def _train(args: argparse.Namespace) -> int:
    import torch

    from orbiter.models.training import evaluate, train_digits

    model, history, split = train_digits(
        args.model, seed=args.seed, epochs=args.epochs, progress=not args.quiet
    )
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "model.pt")
    held_out = evaluate(model, split.test)
    summary = {
        "model": args.model,
        "seed": args.seed,
        "dataset": f"digits@seed{args.seed}",
        "seconds": round(history.seconds, 2),
        "test_accuracy": held_out["accuracy"],
        "epochs": history.epochs,
    }
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=1))
    print(
        f"{args.model}: test accuracy {held_out['accuracy']:.4f} after "
        f"{len(history.epochs)} epochs in {history.seconds:.1f}s; "
        f"wrote {args.out / 'model.pt'} and {args.out / 'metrics.json'}"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from orbiter.models.datasets import load_digits_split
    from orbiter.models.exporting import export_onnx, quantize_int8
    from orbiter.models.zoo import build_model

    model = build_model(args.model, seed=args.seed)
    if args.weights is not None:
        model.load_state_dict(torch.load(args.weights, weights_only=True))
    elif args.model in _DIGITS:
        raise SystemExit(f"orbiter: {args.model} needs --weights (from `orbiter models train`)")
    model.eval()
    if args.model in _DIGITS:
        split = load_digits_split(seed=args.seed)
        example, check = split.x_test[:2], split.x_test
    else:
        rng = np.random.default_rng(args.seed)
        example = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
        check = rng.standard_normal((2, 3, 224, 224), dtype=np.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "export": export_onnx(model, args.out, example, check_data=check, atol=args.atol).as_dict()
    }
    if args.int8 is not None:
        if args.model not in _DIGITS:
            raise SystemExit("orbiter: --int8 reports accuracy on digits: digits models only")
        quant = quantize_int8(
            args.out,
            args.int8,
            calibration=split.x_train[:256],
            eval_data=(split.x_test, split.y_test),
        )
        report["int8"] = quant.as_dict()
    print(json.dumps(report, indent=1, default=str))
    return 0


def _register(args: argparse.Namespace) -> int:
    registry = open_registry(args)
    params: dict[str, Any] | None = None
    metrics: Any = None
    if args.metrics is not None:
        summary = json.loads(args.metrics.read_text())
        params = {k: summary[k] for k in ("model", "seed") if k in summary}
        metrics = summary.get("epochs") or None
        if args.dataset is None:
            args.dataset = summary.get("dataset")
    info = registry.register(
        args.name,
        args.file,
        dataset=args.dataset,
        parent_version=args.parent,
        job=args.job,
        aliases=args.alias,
        params=params,
        metrics=metrics,
    )
    aliases = f" ({', '.join(info.aliases)})" if info.aliases else ""
    print(f"{info.name} version {info.version}{aliases}: {info.sha256}")
    return 0


def _alias(args: argparse.Namespace) -> int:
    registry = open_registry(args)
    registry.set_alias(args.name, args.alias, args.version)
    print(f"{args.name}@{args.alias} -> version {args.version}")
    return 0


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _list(args: argparse.Namespace) -> int:
    registry = open_registry(args)
    if args.name is None:
        found = registry.models()
        if args.output == "json":
            print(json.dumps([vars(m) for m in found], indent=1, default=str))
            return 0
        rows = [["NAME", "LATEST", "ALIASES"]]
        for m in found:
            aliases = ",".join(f"{a}={v}" for a, v in sorted(m.aliases.items()))
            rows.append([m.name, str(m.latest_version or "-"), aliases or "-"])
        print(_table(rows))
        return 0
    versions = registry.versions(args.name)
    if args.output == "json":
        print(json.dumps([vars(v) for v in versions], indent=1, default=str))
        return 0
    rows = [["VERSION", "ALIASES", "DATASET", "PARENT", "JOB", "SHA256"]]
    for v in versions:
        rows.append(
            [
                str(v.version),
                ",".join(v.aliases) or "-",
                v.dataset or "-",
                str(v.parent_version or "-"),
                v.job or "-",
                (v.sha256 or "-")[:19],
            ]
        )
    print(_table(rows))
    return 0


def run_models(args: argparse.Namespace) -> int:
    if not args.verbose:
        # The exporter's optimiser passes and mlflow's migrations narrate every step at INFO.
        for noisy in ("onnx_ir", "onnxscript", "onnxruntime", "mlflow", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    commands = {
        "train": _train,
        "export": _export,
        "register": _register,
        "alias": _alias,
        "list": _list,
    }
    from orbiter.models.artifacts import ArtifactError
    from orbiter.models.registry import RegistryError

    try:
        return commands[args.models_command](args)
    except (RegistryError, ArtifactError, ValueError, LookupError, OSError) as e:
        # Registry, dataset and artifact errors say what is wrong; a traceback adds nothing.
        print(f"orbiter models {args.models_command}: {e}", file=sys.stderr)
        return 1
