"""Stage 4, publish: trained runs and baselines registered as versions with their ONNX scorers;
the retention policy that cleans the data home."""
