"""The Flower ServerApp: coef_/intercept_ aggregated over N rounds (FedAvg or a robust rule), then an artifact.

Every reply is checked against fl_contract before it counts; a reply that breaks
it is its owner's failure for the round, named from the SuperNode registration.

Runs inside the SuperLink's ``flwr-serverapp`` process on the coordinator; the
run config (set by ``fedfhe-coordinator train`` through ``flwr run``) says what to train.

Clients score the global model they receive on their held-out rows inside the
train message, so round r's client accuracy arrives with round r+1's replies
(and, in plain runs, with one final evaluate message for the last round; a
secure run's owners send only the sum of their scores, inside SecAgg+, so its
last round has no owners' score). A round's progress line is written once both
its server-side and client-side scores are known.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedfhe_common.contracts import fl_contract as fc
from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.contracts.schema import DatasetSchema, resolve_schema
from fedfhe_common.contracts.transport import from_arrays, to_arrays
from fedfhe_common.ml import models
from fedfhe_common.ml.data import load_table
from fedfhe_common.ml.models import FEDERATED_TREES
from fedfhe_common.ml.preprocessing import Preprocessing, needs_statistics
from fedfhe_common.ml.scoring import score_params
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_coordinator.aggregation import resolve
from fedfhe_coordinator.run_config import RunConfig
from fedfhe_coordinator.serverapp import statistics_round as sr
from fedfhe_coordinator.serverapp.boosting_run import run_boosting
from fedfhe_coordinator.serverapp.privacy import privacy_summary
from fedfhe_coordinator.serverapp.rounds import (
    NodesLost,
    ReplyPolicy,
    TrainingStopped,
    client_scores,
    final_evaluation,
    make_strategy,
    node_owners,
    wait_for_nodes,
)
from fedfhe_coordinator.serverapp.secure_training import (
    NewtonRun,
    resolve_shares,
    run_secure,
)
from fedfhe_coordinator.serverapp.wire_bytes import CountingGrid

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    grid = CountingGrid(grid)
    run = RunConfig.from_flower(context.run_config)
    schema = resolve_schema(run.schema)
    family = run.model
    models.check_family(family, schema)
    model_params = run.model_params
    rounds, min_nodes, timeout = run.num_server_rounds, run.min_nodes, run.round_timeout
    out_dir = Path(run.output_dir or "fedfhe-training")
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = out_dir / "progress.jsonl"
    progress.write_text("")

    raw_public = load_table(run.public_test, schema) if run.public_test else None

    secure = run.secure_aggregation
    boosting = family in FEDERATED_TREES
    if boosting and (secure or run.aggregation != "auto"):
        raise ConfigError(f"model {family} trains with Flower's FedXgb strategies in plain runs: "
                          "training.aggregation must be auto and secure aggregation off")
    aggregation, why = ("fedxgb", "boosted trees") if boosting else resolve(
        run.aggregation, family, schema, secure, run.clip_norm, secure and run.dp_noise_multiplier > 0, model_params)
    policy = ReplyPolicy(
        family, schema, max_examples=run.max_examples, per_owner=run.max_examples_per_owner,
        clip_norm=run.clip_norm, newton_terms=aggregation == "newton", max_share=run.max_owner_share,
    )
    started = time.time()

    owner_keys = run.owner_keys
    connected = wait_for_nodes(grid, min_nodes, run.wait_for_nodes, owner_keys)
    config = ConfigRecord(
        {
            fc.MODEL: family,
            fc.MODEL_PARAMS: json.dumps(model_params),
            fc.SCHEMA_NAME: schema.name,
            fc.N_FEATURES: schema.n_features,
            fc.SCHEMA_SHA256: fc.schema_sha256(schema),
            fc.LOCAL_EPOCHS: run.local_epochs,
        }
    )
    if aggregation == "newton":
        config[fc.PHASE] = fc.PHASE_NEWTON
    initial = to_arrays(models.initial_parameters(family, schema))
    prep, prep_summary = statistics(grid, context, run, schema, config, policy, len(connected))
    config[fc.PREPROCESSING] = json.dumps(prep.to_dict())
    if prep_summary.get("rows"):
        config[fc.FEDERATION_ROWS] = int(prep_summary["rows"])
    public = None if raw_public is None else (prep.transform(raw_public[0], run.public_test), raw_public[1])
    if boosting:
        run_boosting(grid, run, schema, config, policy, prep, public, progress, out_dir,
                     {"started": started, "privacy": privacy_summary(run, len(connected), None),
                      "statistics": prep_summary})
        return

    def score(params: list[np.ndarray]) -> dict[str, float]:
        return score_params(family, model_params, params, schema, *public) if public else {}

    threshold: int | None = None
    if secure:
        final_arrays, strategy, grid = run_secure(
            grid, context, run, policy=policy, progress=progress, config=config, initial=initial,
            connected=len(connected), score=score,
            newton_run=newton_run(aggregation, family, schema, prep, model_params),
            server_step=(run.server_learning_rate, run.server_momentum) if aggregation == "fedavgm" else None,
        )
        threshold = strategy.threshold
    else:
        strategy = make_strategy(
            aggregation, progress, policy,
            owner_keys=owner_keys,
            node_wait=run.wait_for_nodes,
            min_nodes=min_nodes,
            num_malicious_nodes=run.num_malicious_nodes,
            trimmed_fraction=run.trimmed_fraction,
            multikrum_select=run.multikrum_select,
            server_learning_rate=run.server_learning_rate,
            server_momentum=run.server_momentum,
            model_params=model_params,
        )
        strategy.counter = grid

        def on_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            metrics = score(from_arrays(arrays, family, schema))
            if server_round >= 1:
                entry = strategy.entry(server_round)
                entry["seconds"] = time.time() - entry.get("started", started)
                entry["server"] = metrics
            return MetricRecord(metrics) if metrics else None

        try:
            final_arrays = strategy.start(
                grid=grid,
                initial_arrays=initial,
                num_rounds=rounds,
                timeout=timeout,
                train_config=config,
                evaluate_fn=on_round,
            ).arrays
        except TrainingStopped as stop:
            assert stop.arrays is not None
            final_arrays = stop.arrays
    stopped = strategy.stopped
    if stopped is not None:
        rounds = stopped.server_round - 1  # the final evaluation scores the model that round made
        strategy.entry(rounds)["stopped"] = str(stopped)
        if stopped.earlier == 1:
            strategy.flush(rounds)
            raise RuntimeError(f"{stopped}; the model it ended with is the initial one (see {progress})")
    if not len(final_arrays):
        raise RuntimeError("no round produced aggregated parameters: every node failed (see progress.jsonl)")
    strategy.learn_names(grid)
    if not secure:
        # A secure run sends no evaluate message: its replies would carry each owner's held-out scores in the
        # clear, which owners refuse in secure runs (fedfhe_owner.clientapp.client_app.evaluate). Its rounds'
        # scores come from the score sums inside the next round's SecAgg+ vector; the final model's would need
        # one more.
        sent, replies = final_evaluation(grid, final_arrays, config, timeout)
        replies, rejected = strategy.screen(rounds, replies, "eval", sent)
        strategy.note_replies(rounds, replies, "eval", sent, rejected)
        strategy.entry(rounds)["clients"] = client_scores([m for m in replies if id(m) not in rejected])
    strategy.flush(rounds)

    coef, intercept = from_arrays(final_arrays, family, schema)
    per_round = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]
    TrainingArtifact(
        family=family,
        schema=schema,
        coef=coef,
        intercept=intercept,
        model_params=model_params,
        metrics={"rounds": rounds, **({"stopped": str(stopped)} if stopped is not None else {}),
                 "aggregation": {"used": aggregation, "why": why}, "per_round": per_round,
                 "seconds": time.time() - started,
                 "privacy": privacy_summary(run, len(connected), threshold), "statistics": prep_summary},
        origin="federated",
        preprocessing=prep,
    ).save(out_dir / "artifact", mode=0o750)  # the release user (the service's group) copies it out to sign


def newton_run(aggregation: str, family: str, schema: DatasetSchema, prep: Preprocessing,
               model_params: dict[str, Any]) -> Any:
    """What a secure newton run needs to scale the owners' terms (secure_training.NewtonRun); None otherwise."""
    if aggregation != "newton":
        return None

    return NewtonRun(family, schema, model_params, prep.largest_input())


def statistics(grid: Grid, context: Context, run: RunConfig, schema: DatasetSchema, config: ConfigRecord,
               policy: ReplyPolicy, connected: int) -> tuple[Preprocessing, dict[str, Any]]:
    """The preprocessing's statistics from the federation (``statistics_round``), or the identity (legacy schemas)."""
    if not needs_statistics(schema):
        return Preprocessing.identity(schema), {"mode": "none (legacy schema: rows go to the model as they are)"}

    names = node_owners(grid, run.owner_keys)

    def owner_of(node: int) -> str:
        return names.get(int(node), f"node-{int(node)}")

    try:
        if run.secure_aggregation:
            shares, threshold = resolve_shares(run.secagg_num_shares, run.secagg_reconstruction_threshold, connected)
            return sr.secure_statistics(grid, context, run, schema, config, shares=shares, threshold=threshold,
                                        owner_of=owner_of)
        return sr.plain_statistics(grid, schema, config, min_nodes=run.min_nodes, timeout=run.round_timeout,
                                   cap=policy.cap, owner_of=owner_of)
    except sr.StatisticsFailed as exc:
        raise NodesLost(str(exc)) from None
