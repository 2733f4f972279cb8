"""The application layer: every front end reaches models through it, and it alone knows the model
machinery below (repository, generation, encoding, sequences). One module per concern; `Service`
groups them for the front ends."""
