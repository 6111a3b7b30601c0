"""What a person watching a stage sees: log lines with ETA, the /status endpoint, TensorBoard runs."""
