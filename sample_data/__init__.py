"""Generated sample data: a synthetic satellite-like scene with ground truth, and the demo model."""
