"""The event index: SQLModel tables fed from the ledger's and the oracle's logs (SQLite by default,
PostgreSQL by URL), resumable, idempotent and safe across reorgs, with a digest chain over every
change it applied. `chain_client.audit` replays and verifies it; `chain_client.audit_cli` is the
`certledger audit` command.

    models    the tables (uint256 stored without loss)
    decode    strict, fast decoding of our contracts' logs
    books     the records rebuilt from events, and the invariants they must keep
    digest    the canonical encoding and the digest chain
    source    what the index asks of a node (raw, batched JSON-RPC)
    sync      the indexer: adaptive ranges, reorg rollback, crash-safe commits
    writer    where range writes run: inline, a thread, or a child process for a replay
    db        the database: schema, bulk writes, rollback
    views     the contracts' own view of every record at a block (for verify)
    state     reading the index: books at a block, holdings, history, lineage
    export    CSV files and a JSON report
    svg       lineage as a picture
    workload  a seeded random lifecycle for tests and benchmarks
"""
