"""Calibration: fit cost (kernel curves or iteration lines), KV capacity, output-length
distributions and speculative acceptance from measurements; each writes a file or a
scenario snippet that the simulator reads."""
