"""Benchmarks of provision on lab clusters (issue 6, DESIGN.md section 5): `python -m bench`.

They measure and print; they never fail on a time (a non-zero exit means something broke).
"""
