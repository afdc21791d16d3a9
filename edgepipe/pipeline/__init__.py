"""The make-like machinery: recipes, the runner, the lock file. It knows stage kinds, not stages."""
