"""Scoring images against prompts: the pixel judge, VQAScore, per-skill summaries and their bootstrap CIs."""
