"""Text side: frozen encoders, aggregation over their layers, the embedding cache, layer statistics."""
