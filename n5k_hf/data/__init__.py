"""Nutrition5k reading, synthetic dishes, food masks, Hugging Face conversion and transforms."""
