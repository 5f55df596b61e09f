"""Encoder service: POST /encode turns an image into a text+sketch payload."""
