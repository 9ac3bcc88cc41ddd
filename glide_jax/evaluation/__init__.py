"""Evaluation: the classifier and its cache, the scores (classifier FID, accuracy, diversity), the report,
and `--mode=eval`."""
