"""Decoding. `reference` holds the naive decoders that the fast DEED decoder is tested against."""
