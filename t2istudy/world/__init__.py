"""The world the study generates and asks about: the procedural shapes world, its benchmark, GenAI-Bench."""
