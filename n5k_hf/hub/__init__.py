"""Model cards, dataset cards and Hub uploads."""
