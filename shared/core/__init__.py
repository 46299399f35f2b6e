"""The common infrastructure: settings, messages, bus, database, runs, shards, the service
skeleton."""
