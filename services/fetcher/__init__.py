"""fetcher: download, check and decode each image of a post into the `images` topic."""
