"""The preprocess service: the public edge of the prediction pipeline."""
