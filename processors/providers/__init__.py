"""Model providers: everything that turns a rendered prompt into answer text."""
