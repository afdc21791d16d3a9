"""One module per stage kind, siblings; `registry` is the only module that imports them all."""
