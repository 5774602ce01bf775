"""The study itself: grid files, running them (papermill, SLURM), their status and results, analysis, CLI."""
