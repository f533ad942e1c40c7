"""End-to-end runs: every experiment through Hydra at smoke scale, the launchers, the entry points."""
