"""Sample data: a synthetic satellite-like scene with ground truth, and the trained demo model."""
