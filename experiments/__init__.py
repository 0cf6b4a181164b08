"""fedtff's experiment scripts; each is a thin layer of flags over the library."""
