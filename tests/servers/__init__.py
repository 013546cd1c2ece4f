"""Real authorization servers for the tests, and the pytest fixtures that run them."""
