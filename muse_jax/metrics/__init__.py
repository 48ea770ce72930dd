"""Metrics: reconstruction quality, FID, prompt alignment."""
