"""Text-guided editing: masks, the known region through sampling, the edit mode and its evaluation."""
