"""The postprocess service: logits in, label, top-k and calibrated confidence out."""
