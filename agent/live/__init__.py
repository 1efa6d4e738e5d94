"""The live view slice: the page, its frame stream and input, and page links."""
