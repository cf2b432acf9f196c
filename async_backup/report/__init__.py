"""What a run tells: summary, progress, the run report and metrics, the Teams card and its sender, logging."""
