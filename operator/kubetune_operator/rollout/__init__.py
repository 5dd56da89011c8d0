"""The ModelRollout controller: canary steps on a weighted route, analysis on Prometheus."""
