"""`make demo`: the whole pipeline on loopback with a run report, built on the test bed (fedfhe_testbed)."""
