"""ml_collections config files, one per stage: `--config=configs/base.py:size=tiny`."""
