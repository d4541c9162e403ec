"""Conversion to .tflite (in a pool of workers when it pays), fidelity of a .tflite against the original
model, XNNPACK checks, Vela compilation for Ethos-U."""
