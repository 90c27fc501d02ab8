"""Scores, calibration, pictures, embeddings and the scikit-learn baselines."""
