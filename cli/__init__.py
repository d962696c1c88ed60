"""The retinaq command line."""
