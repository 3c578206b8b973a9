"""The traffic generator: held-out digits, bad inputs and drifted inputs, sent at a rate."""
