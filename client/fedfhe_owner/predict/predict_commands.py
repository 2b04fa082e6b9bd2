"""fedfhe-owner subcommands for encrypted inference: predict, delete-keys.

``register(sub)`` adds them to the data owner's argparse tree; handlers
return an exit code and raise FedfheError for a one-line message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedfhe_common.runtime.output import add_format, print_json, wants_json
from fedfhe_owner import config as owner_config


def _predict(args: argparse.Namespace) -> int:
    from fedfhe_owner.api import Predictor  # lazy: pulls in grpc
    from fedfhe_owner.predict.predict_io import (  # lazy: pulls in grpc
        load_rows,
        write_predictions,
    )

    with Predictor(args.config, model=args.model or "", version=args.model_version or "", progress=not args.no_progress,
                   batch_size=args.batch_size) as predictor:
        X, y = load_rows(args.input, predictor.schema, args.labels)
        result = predictor.predict_result(X)
        cfg = predictor.config
    write_predictions(args.out, result, y)
    if wants_json(args):
        summary = {**result.summary(), "out": str(args.out), "state_dir": str(cfg.state_dir)}
        if y is not None:
            summary.update(result.metrics(y))
        print_json(summary)
        return 0
    s, b = result.seconds, result.bytes
    print(f"{result.rows} encrypted predictions from {result.model_id} {result.version} -> {args.out}")
    how = "cached"
    if result.keys_uploaded:
        how = "uploaded"
    elif result.keys_attached_from:
        how = f"attached (uploaded for version {result.keys_attached_from})"
    reused = f", generated for version {result.keys_reused_from}" if result.keys_reused_from else ""
    print(f"  keys: {how} id {result.key_id} ({b['evaluation_keys'] / 1e6:.2f} MB evaluation keys, "
          f"{b['uploaded_keys'] / 1e6:.2f} MB uploaded{reused}; private key stays in {cfg.state_dir})")
    print(f"  {result.latency_per_row_s * 1000:.1f} ms/row (encrypt {s['encrypt']:.2f}s, round trips {s['rpc']:.2f}s, "
          f"server FHE {s['server']:.2f}s, decrypt {s['decrypt']:.2f}s), "
          f"{b['ciphertexts'] / 1e6:.2f} MB sent, {b['results'] / 1e6:.2f} MB received")
    if y is not None:
        m = result.metrics(y)
        shown = f"{100 * m['accuracy']:.2f}%" if "accuracy" in m else f"R² {m['r2']:.4f}, MAE {m['mae']:.4g}"
        print(f"  {result.metric} against the labels in {args.input}: {shown}")
    return 0


def _delete_keys(args: argparse.Namespace) -> int:
    from fedfhe_owner.api import endpoint_of  # lazy: pulls in grpc
    from fedfhe_owner.predict.encrypted import (  # lazy: pulls in grpc
        delete_keys,
        resolve_model,
    )
    from fedfhe_owner.predict.inference_client import (
        InferenceClient,  # lazy: pulls in grpc
    )

    cfg = owner_config.load(args.config)
    endpoint = endpoint_of(cfg, args.config)
    with InferenceClient(endpoint) as client:
        info = resolve_model(client, args.model or endpoint.model_id, args.model_version or "")
        deleted = delete_keys(endpoint, cfg.state_dir, info.model_id, info.version, client=client)
    if deleted and deleted.versions_left:
        print(f"detached evaluation keys {deleted.key_id} from {info.model_id} {info.version} on {endpoint.address}; "
              f"they still serve version(s) {', '.join(deleted.versions_left)}")
    elif deleted:
        print(f"deleted evaluation keys {deleted.key_id} of {info.model_id} {info.version} from {endpoint.address}")
    else:
        print(f"no evaluation keys of {info.model_id} {info.version} recorded for {endpoint.address}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add predict and delete-keys to fedfhe-owner's subcommands."""
    p = sub.add_parser("predict", help="encrypted predictions on the inference node for the rows of a file")
    p.add_argument("--config", type=Path, required=True, help="owner.yaml (with an 'inference' section)")
    p.add_argument("--input", type=Path, required=True, help="rows: CSV (label column optional), NPZ or IDX")
    p.add_argument("--labels", type=Path, help="labels file for IDX input")
    p.add_argument("--out", type=Path, required=True, help="predictions file (.csv or .json)")
    p.add_argument("--model", help="model id (default: inference.model_id, or the only model served)")
    p.add_argument("--model-version", help="model version (default: the latest)")
    p.add_argument("--batch-size", type=int, help="rows per Predict call (default: inference.batch_size)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_format(p)
    p.set_defaults(fn=_predict)

    p = sub.add_parser("delete-keys", help="make the inference node forget this owner's keys for a model version "
                       "(keys shared with other versions stay for those)")
    p.add_argument("--config", type=Path, required=True, help="owner.yaml (with an 'inference' section)")
    p.add_argument("--model", help="model id (default: inference.model_id, or the only model served)")
    p.add_argument("--model-version", help="model version (default: the latest)")
    p.set_defaults(fn=_delete_keys)
