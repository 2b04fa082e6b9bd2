"""python -m fedfhe_demo: the whole pipeline on one machine (what `make demo` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedfhe_common.ml.models import FEDERATED_TREES, LOCAL_FAMILIES, check_family
from fedfhe_common.runtime.errors import FedfheError
from fedfhe_common.runtime.exit_status import exit_with
from fedfhe_testbed.datasets import BUILTIN, demo_schema, is_tabular

from .pipeline import main
from .steps import Options


def parse(argv: list[str] | None = None) -> Options:
    ap = argparse.ArgumentParser(prog="fedfhe-demo", description=__doc__)
    ap.add_argument("--dataset", default="digits", choices=list(BUILTIN),
                    help="diabetes is a regression; breast-cancer, wine and penguins are real tables (typed schemas)")
    ap.add_argument("--owners", type=int, default=3)
    # Tables train with newton (aggregation auto), within 1e-4 of the pooled fit in about 7 rounds.
    ap.add_argument("--rounds", type=int, default=None, help="default: 8 on the tables, 5 otherwise")
    # Tree families are accepted here only to be refused by check_family with the reason (train-local).
    ap.add_argument("--model", default="LogisticRegression", choices=LOCAL_FAMILIES)
    ap.add_argument("--split", default="dirichlet", choices=["iid", "dirichlet"], help="default: non-IID")
    ap.add_argument("--alpha", type=float, default=1.0, help="Dirichlet concentration for --split dirichlet")
    ap.add_argument("--n-bits", default="default",
                    help="quantisation bits for FHE, 'auto', or 'default' (compile's: 8 on pixels, 10 on tables)")
    ap.add_argument("--max-rows", type=int, default=None, help="subsample the dataset (Fashion-MNIST: 70000 rows)")
    ap.add_argument("--work-dir", type=Path, default=None, help="default: a fresh directory, printed at start")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.rounds is None:
        a.rounds = 8 if is_tabular(a.dataset) else 5
    if a.owners < 1 or a.rounds < 1:
        ap.error("--owners and --rounds must be >= 1")
    try:  # before any process starts: Ridge on digits fails here, not inside the ServerApp
        check_family(a.model, demo_schema(a.dataset))
    except FedfheError as exc:
        ap.error(str(exc))
    if a.model in FEDERATED_TREES:  # the demo encrypts hundreds of held-out rows: seconds each for a tree
        ap.error(f"the demo trains the linear families; {a.model} federates with coordinator.yaml's "
                 "training.xgboost (docs/data-and-models.md, Federated XGBoost; tested in "
                 "tests/loopback/test_tabular_federation.py)")
    return Options(a.dataset, a.owners, a.rounds, a.model, a.split, a.alpha, a.n_bits, a.work_dir, a.max_rows,
                   a.seed)


if __name__ == "__main__":
    exit_with(lambda: main(parse()))
