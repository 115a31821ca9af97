"""n5k-hf: Depth Anything V2 Metric fine-tuned on Nutrition5k as a food volume meter."""

__version__ = "0.1.0"
