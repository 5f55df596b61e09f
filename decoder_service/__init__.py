"""Decoder service: POST /decode regenerates an image from a payload, with dynamic batching."""
