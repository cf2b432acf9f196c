"""What the operator configured: config.json read into frozen dataclasses, targets and their bucket names."""
