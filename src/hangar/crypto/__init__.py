"""Key material and cryptographic primitives: the only package that touches them."""
