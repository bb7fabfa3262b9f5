"""Dataset makers and loaders (`mathforge data ...`)."""
