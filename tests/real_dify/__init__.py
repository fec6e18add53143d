"""Real Dify (api + worker from upstream source) for the tests; see harness.py and README.md."""
