"""The operator layer: the `dualphase` command line, the embedded stack, the local broker,
reports."""
