"""Features: the one encoder-spec parser, feature extraction, the feature cache, neighbour
search."""
