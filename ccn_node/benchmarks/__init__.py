"""`ccn-node bench …`: benchmarks that drive the whole node (served processes, the API, backups).

They sit outside the layered packages because they use all of them, like the CLI does;
benchmarks of one package's internals live in that package (ledger/bench.py, …).
"""
