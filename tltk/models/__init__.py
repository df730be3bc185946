"""Models: backbones (a registry of specs with named blocks), heads and the preprocessing layer."""
