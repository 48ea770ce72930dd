"""Input pipelines (grain), built-in datasets and preprocessing."""
