"""The engine: workspace, tables, checkpoints, one task's cycle loop, pre-training, and one function per command."""
