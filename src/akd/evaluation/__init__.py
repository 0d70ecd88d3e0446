"""Faithfulness and speed of saliency methods: RISE-style insertion/deletion, intensity, pointing games."""
