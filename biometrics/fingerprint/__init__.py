"""Fingerprint algorithms: enhancement, minutiae extraction, quality, matching.

Pure numpy/OpenCV: nothing here does I/O, so the same code runs on the device
(extraction) and on the verifier (matching).
"""
