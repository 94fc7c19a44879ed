"""Training toolkit: LoRA fine-tuning, checkpoint conversion, evaluation reports, synthetic data.

Imports ``model`` (the one decode → prepare → forward path), never ``service``.
"""
