"""Update -> Update transforms (compression, clipping, privacy noise, masking)."""
