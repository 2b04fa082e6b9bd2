"""The test bed: every fedfhe role as a real process on loopback, with the data to feed it.

``cluster.Cluster`` (SuperLink, SuperNodes, inference node), ``inference_node`` (one node on its
own), ``datasets``/``tabular`` (the built-in data, nothing downloads), ``partition``/``partition_cli``
(per-owner splits, the ``fedfhe-partition`` script) and ``reference`` (the centralised model a
federation is measured against). `make demo` (fedfhe_demo), the tests and bench/ build on it; it is
never deployed to hosts.
"""
