"""What every part of the project shares: error types, atomic file I/O, model loading, the RL parquet schema."""
