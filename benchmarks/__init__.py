"""Speed and quality measurements (`python benchmarks/<name>.py`); their figures are in
docs/benchmarks.md."""
