"""Models: the registry, diffusers families, the embedded default's parts, flow math."""
