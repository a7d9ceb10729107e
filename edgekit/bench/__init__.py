"""Benchmarks and soak runs (top layer, beside the CLI): `suite` (`edgekit bench --suite all`, `make bench`),
`report` (its JSON/Markdown/plots) and `soak` (`python -m edgekit.bench.soak`, `make soak`). Apps are found through
the app registry (edgekit.apps.registry): their bench cases and live commands, never by importing an app directly."""
