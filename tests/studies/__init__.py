"""Tests of the top floor ``experiments``: the runner, the studies, aggregation, the report and the benchmark."""
