"""Distillation: data sources, losses, recipes and the staged, resumable trainer."""
