"""The library every service shares. Its areas, lowest first:

- ``shared.core``: settings, messages and the bus's table, the Kafka bus, the database and its
  migrations, runs (submission, jobs, progress), shards, the token budgets checked at start-up,
  the service skeleton.
- ``shared.inference``: one batched chat interface over transformers, vLLM and OpenAI servers;
  the embedded model; the hardware's threads and dtype; the training-memory estimate.
- ``shared.datasets``: one reader for JSON Lines, one module per dataset format, problem files,
  the synthetic problem family.
- ``shared.method``: the paper's pieces the services share: grading, prompts, markers,
  evaluation and its baselines, the arm trained on given solutions, paired statistics.

What only one service uses lives in that service's folder; the operator layer (CLI, embedded
stack, reports) is the package ``dualphase``. ``docs/architecture.md`` has the rules.
"""
