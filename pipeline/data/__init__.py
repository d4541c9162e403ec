"""What the user gives: the Keras model (loading, Keras-2 compatibility) and the samples (--data forms,
checks, the calibration/evaluation split, memory-flat batches)."""
