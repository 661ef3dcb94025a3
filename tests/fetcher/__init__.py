"""Shared pieces of the fetcher's tests: a loopback image host, a scriptable DNS, a test address policy."""
