"""Other model servers' entry points for bench_peers; each file runs in that server's own environment."""
