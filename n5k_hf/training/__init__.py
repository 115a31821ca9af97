"""Typed fine-tuning configuration and the accelerate training loop."""
