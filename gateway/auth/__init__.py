"""Authentication core: directory, verifiers, SASL mechanisms, checkers, realm."""
