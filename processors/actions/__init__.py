"""Actions: the side effects that AI workflow decisions turn into."""
