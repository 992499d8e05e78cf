"""Cameras through OpenCV: V4L2 devices, network streams (RTSP, HTTP MJPEG) and files."""
