"""classifier: batches `images` through Triton and writes hashtag suggestions to `predictions`."""
