"""edgekit: take models to edge devices."""
