"""The train stage's loop, its resumable state and checkpoints, and its report (DVCLive)."""
