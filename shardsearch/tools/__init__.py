"""What users and operators run, over the client library and the shared base: the `shardsearch` command (`cli`), the
local launcher (`local`, `sidecars`), the load generator (`bench`), ingest, export and import (`ingest`,
`transfer`), offline evaluation (`evaluate`, `relevance`, `query_sets`), the admin commands (`admin`), the demo
and the seeded datasets the tests and benchmarks use (`datasets`).

Nothing in the servers (shardsearch.coordinator, .shard_server, .encoder_client) or in the shared base imports from
here (tests/unit/test_layers.py keeps it so).
"""
