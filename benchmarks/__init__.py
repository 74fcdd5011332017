"""`make bench` / `python -m benchmarks`: every technique of the course and the peer recipes, one run."""
